"""``make screenshots``: every console page a window clerk works in, as PNG under docs/console/ (for
README.md and docs/console.md).

Not collected by ``make test`` (the name does not start with ``test_``); ``make screenshots`` runs it
explicitly. It builds a small, realistic day at the window through the real API and services —
demo registry, a window binding, an online binding waiting for review with its scan, settlements
and a refund with their pushes (delivered, failed, not subscribed), a suspension, a filing — then
signs in as the demo's ``window1`` (as README's "Try the console" does), works the forms (reserved
phone, window identity link, filing, certification) and photographs each page in headless Chromium;
the admin pages (suspending, the audit log) as ``admin1``. Every page photographed is checked to
carry no full ID, card or phone number of the demo people (R17). Chinese text needs a CJK font
(Debian: fonts-wqy-microhei).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app.demo import DEMO_CONSOLE_PASSWORD, DEMO_PHONES, totp_now
from app.policy import SHANGHAI
from tests.binding_helpers import CHILD, OWNER, PARENT, PEOPLE, SPOUSE, bind, bind_at_window, created, upload
from tests.binding_helpers import sign_in as user_sign_in
from tests.browser.conftest import sign_in_page
from tests.browser.test_console_browser import png_proof
from tests.conftest import TEMPLATE_DEDUCTION, random_openid
from tests.helpers import bearer, sign_in_wechat, signed_in_person
from tests.money_helpers import drug, fresh, issue, item, person_id, refund, settle

pytestmark = pytest.mark.browser
OUT = Path(__file__).resolve().parents[2] / "docs" / "console"
NEW_PHONE = "13900008888"
# What must never appear in a page: every demo ID number, its birth-date part, card and phone number.
UNMASKED = [number for id_number in PEOPLE for number in (id_number, id_number[6:14])] + [
    card for _name, card in PEOPLE.values()] + [*DEMO_PHONES.values(), NEW_PHONE]


def _a_day_at_the_window(app, client, sandbox, demo) -> dict[str, Any]:
    fresh(app)
    window, admin = bearer(demo.tokens["window1"]), bearer(demo.tokens["admin1"])
    window_binding = created(bind_at_window(client, demo.tokens["window1"], OWNER, CHILD, "child"))
    spouse = user_sign_in(client, sandbox, SPOUSE)
    pending = created(bind(client, spouse, PARENT, "parent", [created(upload(client, spouse, png_proof()))["id"]]))
    # 张伟 accepts the deduction notice three times (one-time subscriptions): WeChat and we both know.
    openid = random_openid()
    owner = signed_in_person(client, sandbox, PEOPLE[OWNER][0], OWNER, openid=openid)
    sandbox.grant_wechat_consent(openid, TEMPLATE_DEDUCTION, "one_time", 3)
    for _ in range(3):
        client.post("/api/v1/subscriptions", headers=bearer(owner), json={
            "channel": "wechat", "mode": "one_time", "results": {TEMPLATE_DEDUCTION: "accept"}})
    notifier = app.extensions["domain"].notifier
    child = person_id(app, CHILD)
    sandbox.inject_fault("wechat.subscribe_send", errcode=47003)
    first = settle(client, issue(client, owner, child), [drug(12_800), item("consultation", 2_500)])
    notifier.drain()
    sandbox.clear_faults()
    for amount in (5_600, 23_400, 8_900):
        settle(client, issue(client, owner, child), [drug(amount)])
    refund(client, first.get_json()["settlement_no"], 2_500)
    notifier.drain()
    client.post("/api/v1/staff/suspensions", headers=admin,
                json={"beneficiary_id_number": PARENT, "reason": "核查中：疑似倒卖药品"})
    client.post("/api/v1/staff/offsite-filings", headers=window, json={
        "id_number": CHILD, "region_prefix": "53", "valid_from": "2026-01-01", "valid_to": "2026-12-31"})
    # 张建国 cannot pass WeChat's real-name check: he asks for a window code and comes to the window.
    parent_user = sign_in_wechat(client, sandbox)["access_token"]
    window_code = client.post("/api/v1/me/identity/window-code", headers=bearer(parent_user))
    assert window_code.status_code == 201, window_code.get_json()
    return {"window_binding": window_binding["id"], "pending": pending["id"],
            "window_code": window_code.get_json()["code"]}


def _sign_in(page, username: str) -> None:
    """The demo staff member signs in as README says: password and the current one-time code."""
    sign_in_page(page, username, DEMO_CONSOLE_PASSWORD, totp_now(username))


def test_screenshots_of_the_console_pages(page, app, client, sandbox, demo):
    OUT.mkdir(parents=True, exist_ok=True)
    ids = _a_day_at_the_window(app, client, sandbox, demo)
    today = datetime.now(UTC).astimezone(SHANGHAI).date()

    def shot(name: str, selector: str | None = None) -> None:
        if selector:
            page.wait_for_selector(selector)
        html = page.content()
        assert "无法完成操作" not in html and 'class="alert alert-error"' not in html, name
        leaked = [value for value in UNMASKED if value in html]
        assert not leaked, f"{name} shows {leaked} unmasked"
        page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)

    page.goto("/console/login")
    page.fill("#username", "window1")
    shot("01-login")
    _sign_in(page, "window1")
    shot("02-overview", "svg.chart")
    page.goto("/console/reviews")
    shot("03-reviews", f"a[href='/console/bindings/{ids['pending']}']")
    page.goto(f"/console/bindings/{ids['pending']}")
    page.wait_for_load_state("networkidle")
    shot("04-review-binding", "#approve")
    page.goto("/console/window-binding")
    shot("05-window-binding", "#bind")
    page.goto(f"/console/bindings/{ids['window_binding']}/certificate")
    page.emulate_media(media="print")
    shot("06-certificate-print", "#certificate svg")
    page.emulate_media(media="screen")
    page.goto(f"/console/attestations/{ids['window_binding']}")
    shot("11-attestation", "#attestation-verified.ok")

    page.goto("/console/persons")
    page.fill("#id_number", OWNER)
    page.click("#look-up")
    shot("07-person-lookup", "#person-facts")
    page.click("#to-phone")
    page.fill("#id_number", PARENT)
    page.fill("#phone", NEW_PHONE)
    page.click("#update-phone")
    shot("12-reserved-phone", "#phone-updated")
    page.click("nav.menu >> text=窗口实名核验")
    page.fill("#id_number", PARENT)
    page.fill("#link_code", ids["window_code"])
    page.click("#link-identity")
    shot("13-identity-link", "#identity-linked")

    page.click("nav.menu >> text=异地备案")
    page.fill("#id_number", SPOUSE)
    page.fill("#region_prefix", "4401")
    page.fill("#valid_from", today.isoformat())
    page.fill("#valid_to", today.replace(month=12, day=31).isoformat())
    page.fill("#reason", "随子女在广州居住，已提交居住证明")
    page.click("#file")
    shot("14-offsite-filing", "#filing-created")
    page.click("nav.menu >> text=慢性病认定")
    page.fill("#id_number", PARENT)
    page.fill("#disease_code", "I10")
    page.fill("#valid_from", today.isoformat())
    page.fill("#valid_to", today.replace(year=today.year + 1, month=12, day=31).isoformat())
    page.fill("#reason", "已核验二级以上医院诊断证明")
    page.click("#certify")
    shot("15-chronic-certification", "#certification-created")

    page.goto("/console/deliveries?state=failed")
    shot("09-deliveries", "button.resend")
    page.goto("/console/account")
    shot("16-account", "#change-password")

    # Suspending and lifting, and the audit log, are the admin's.
    page.click("button:has-text('退出')")
    page.wait_for_url("**/console/login")
    _sign_in(page, "admin1")
    page.goto("/console/suspensions")
    shot("08-suspensions", "#suspend")
    page.goto("/console/audit")
    shot("10-audit-log", "table.grid")
