"""The console in a real browser (headless Chromium): the window clerk's work end to end (issue 12)."""

from __future__ import annotations

import io

import pytest
import segno
from sqlalchemy import select

from app.extensions import app_session
from models import Binding
from tests.binding_helpers import CHILD, OWNER, PARENT, PEOPLE, SPOUSE, bind, created, upload
from tests.binding_helpers import sign_in as user_sign_in
from tests.browser.conftest import sign_in_page
from tests.conftest import TEMPLATE_DEDUCTION
from tests.helpers import bearer
from tests.money_helpers import balance, fresh, make_binding, person_id, settle_by_card
from tests.notify_helpers import NotifyWorld
from tests.webconsole.helpers import PASSWORD, code, make_staff

pytestmark = pytest.mark.browser


def png_proof() -> bytes:
    """A real, decodable PNG (the browser must be able to draw it)."""
    out = io.BytesIO()
    segno.make("结婚证 扫描件").save(out, kind="png", scale=6)
    return out.getvalue()


def sign_in(page, app, username: str, role: str) -> None:
    sign_in_page(page, username, PASSWORD, code(make_staff(app, username, role)))


def test_a_clerk_signs_in_with_a_totp_code_and_sees_the_overview(page, app):
    page.goto("/console/")
    assert "/console/login" in page.url
    sign_in(page, app, "clerk", "window")
    assert page.inner_text("h1") == "概览"
    assert page.locator("svg.chart").count() >= 4
    assert page.locator("nav.menu >> text=窗口绑定").count() == 1


def test_review_and_approve_a_pending_binding_with_its_document(page, app, client, sandbox, demo):
    token = user_sign_in(client, sandbox, SPOUSE)
    document = created(upload(client, token, png_proof()))["id"]
    binding = created(bind(client, token, PARENT, "parent", [document]))
    sign_in(page, app, "clerk", "window")

    page.click("nav.menu >> text=待审核")
    page.click(f"a[href='/console/bindings/{binding['id']}']")
    image = page.locator(f"img[src='/console/documents/{document}']")
    image.wait_for()
    assert page.evaluate("(img) => img.complete && img.naturalWidth > 0", image.element_handle())
    assert "签名验证通过" in page.inner_text("#pledge-verified")
    page.fill("form[action$='/approve'] textarea[name=reason]", "户口本已核验")
    page.click("#approve")

    page.wait_for_selector(".badge-active")
    with app_session() as session, session.begin():
        assert session.get(Binding, binding["id"]).status == "active"


def test_bind_at_the_window_and_print_the_certificate(page, app, demo):
    sign_in(page, app, "clerk", "window")
    page.click("nav.menu >> text=窗口绑定")
    name, card = PEOPLE[CHILD]
    page.fill("#owner_id_number", OWNER)
    page.fill("#beneficiary_name", name)
    page.fill("#beneficiary_id_number", CHILD)
    page.fill("#beneficiary_card_no", card)
    page.select_option("#relationship", "child")
    page.check("#proofs_checked")
    page.check("#pledge_signed")
    page.click("#bind")

    page.wait_for_url("**/certificate")
    certificate = page.inner_text("#certificate")
    assert "绑定凭证" in certificate and "**明" in certificate and OWNER not in page.content()
    assert page.locator("#certificate svg").count() == 1  # the attestation's QR
    page.emulate_media(media="print")
    assert not page.is_visible("header.topbar") and page.is_visible("#certificate")
    assert page.pdf(format="A4").startswith(b"%PDF")
    page.emulate_media(media="screen")
    link = page.locator(".cert-qr .mono").inner_text()
    page.goto(link)
    assert "存证签名有效" in page.inner_text("#attestation-verified")


def test_update_a_reserved_phone_from_the_person_look_up(page, app, demo):
    sign_in(page, app, "clerk", "window")
    page.click("nav.menu >> text=参保人查询")
    page.click("#to-phone")
    page.wait_for_url("**/console/persons/phone")
    page.fill("#id_number", SPOUSE)
    page.fill("#phone", "138 0000 9999")
    page.click("#update-phone")
    page.wait_for_selector("#phone-updated")
    assert "138****9999" in page.inner_text("#phone-updated")
    html = page.content()
    assert "13800009999" not in html and SPOUSE not in html
    assert page.input_value("#id_number") == "" and page.input_value("#phone") == ""


def test_suspend_an_owner_and_the_next_settlement_pays_nothing_from_that_owner(page, app, client, sandbox, demo):
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    sign_in(page, app, "boss", "admin")
    page.click("nav.menu >> text=暂停/恢复")
    page.select_option("#scope", "owner")
    page.fill("#id_number", OWNER)
    page.fill("#reason", "倒卖药品")
    page.click("#suspend")
    assert "已暂停" in page.inner_text("#suspension-created")

    before = balance(app, OWNER)
    token = user_sign_in(client, sandbox, OWNER)
    # R11/R12: the suspended owner gets no 亲情码, and the child's card draws nothing on his account.
    refused = client.post("/api/v1/vouchers", json={"person_id": person_id(app, CHILD)}, headers=bearer(token))
    assert refused.status_code == 422 and refused.get_json()["error"]["details"]["status"] == "suspended"
    result = settle_by_card(client, PEOPLE[CHILD][1], CHILD)
    assert result.status_code == 201 and result.get_json()["copay_fen"] == 0
    assert balance(app, OWNER) == before

    page.click("nav.menu >> text=参保人查询")
    page.fill("#id_number", OWNER)
    page.click("#look-up")
    facts = page.inner_text("#person-facts")
    assert "作为账户所有人已暂停" in facts and "3,500.00" in facts
    assert OWNER not in page.content()


def test_resend_a_failed_notice(page, app, sandbox):
    world = NotifyWorld(app, sandbox)
    owner, delivery_id = world.failed_push(TEMPLATE_DEDUCTION)
    notifier = world.notifier
    sign_in(page, app, "clerk", "window")

    page.click("nav.menu >> text=通知投递")
    row = page.locator(f"#delivery-{delivery_id}")
    assert "47003" in row.inner_text()
    row.locator("input[name=reason]").fill("用户来电确认未收到")
    row.locator("button.resend").click()
    page.wait_for_selector("#resent")
    notifier.drain()

    assert world.delivery(delivery_id).state == "sent"
    assert len(sandbox.sent_messages(to=owner.openid)) == 1


def test_an_auditor_sees_no_action_buttons_and_a_forged_post_is_refused(page, app, client, sandbox, demo):
    token = user_sign_in(client, sandbox, SPOUSE)
    binding = created(bind(client, token, PARENT, "parent", [created(upload(client, token, png_proof()))["id"]]))
    sign_in(page, app, "viewer", "auditor")
    assert page.locator("nav.menu >> text=窗口绑定").count() == 0
    page.goto(f"/console/bindings/{binding['id']}")
    assert page.locator("#approve, #reject, #unbind").count() == 0
    page.goto("/console/suspensions")
    assert page.locator("#suspend").count() == 0
    page.goto("/console/deliveries")

    forged = page.evaluate("""async (id) => {
        const token = document.querySelector("input[name=csrf_token]").value;
        const withToken = await fetch(`/console/bindings/${id}/approve`, {method: "POST",
            body: new URLSearchParams({csrf_token: token, reason: "forged"})});
        const withoutToken = await fetch(`/console/bindings/${id}/approve`, {method: "POST",
            body: new URLSearchParams({reason: "forged"})});
        return [withToken.status, withoutToken.status];
    }""", binding["id"])

    assert forged == [403, 400]
    with app_session() as session, session.begin():
        assert session.scalar(select(Binding.status).where(Binding.id == binding["id"])) == "pending_review"
