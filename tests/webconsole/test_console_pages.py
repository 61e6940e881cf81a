"""Console pages: every route, by role, with the same rules, audit rows and errors as the staff API,
in Chinese, masked (R17), CSRF-protected (issue 12)."""

from __future__ import annotations

import io
import re

import pytest
from sqlalchemy import select

from app.extensions import app_session
from app.services import audit
from models import AuditEvent, Binding, Suspension
from tests.binding_helpers import CHILD, NEIGHBOUR, OWNER, PARENT, PEOPLE, PNG, SPOUSE, bind, created, upload
from tests.binding_helpers import sign_in as user_sign_in
from tests.conftest import TEMPLATE_DEDUCTION
from tests.helpers import bearer
from tests.money_helpers import balance, fresh, make_binding, person_id, settle_by_card
from tests.notify_helpers import NotifyWorld
from tests.webconsole.helpers import post, signed_in

PAGES = ["/console/", "/console/reviews", "/console/persons", "/console/suspensions", "/console/filings",
         "/console/certifications", "/console/deliveries", "/console/audit", "/console/account",
         "/console/account/totp"]
FULL_NUMBERS = [OWNER, SPOUSE, CHILD, PARENT, NEIGHBOUR]


def shanghai_today() -> str:
    """Audit dates are Asia/Shanghai dates (the machine's own date differs after 16:00 UTC)."""
    from datetime import UTC, datetime

    from app.policy import shanghai_date

    return shanghai_date(datetime.now(UTC)).isoformat()


def _no_full_id_numbers(html: str) -> None:
    for number in FULL_NUMBERS:
        assert number not in html
        assert number[:6] + number[6:14] not in html  # not even the part after the masked prefix


def _audit(action: str) -> list[AuditEvent]:
    with app_session() as session, session.begin():
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _pending_binding_with_document(client, sandbox) -> tuple[int, int]:
    """李娜 binds her father-in-law online; the registry does not confirm it, so it waits for review."""
    token = user_sign_in(client, sandbox, SPOUSE)
    document = created(upload(client, token, PNG))["id"]
    binding = created(bind(client, token, PARENT, "parent", [document]))
    assert binding["status"] == "pending_review"
    return binding["id"], document


@pytest.mark.parametrize("role", ["window", "admin", "auditor"])
def test_every_page_opens_for_every_role(app, client, demo, role):
    signed_in(client, app, "staff1", role)
    for path in PAGES:
        response = client.get(path)
        if path == "/console/audit" and role == "window":
            # The audit log is for auditors and admins (as in the staff API); window staff get 403.
            assert response.status_code == 403 and "审计日志" not in client.get("/console/").get_data(as_text=True)
            continue
        assert response.status_code == 200, path
        assert response.content_type.startswith("text/html")


def test_the_menu_follows_the_role(app, client, demo):
    signed_in(client, app, "viewer", "auditor")
    page = client.get("/console/").get_data(as_text=True)
    assert "窗口绑定" not in page and "审计日志" in page
    assert client.get("/console/window-binding").status_code == 403


def test_the_overview_counts_from_sql_and_draws_svg_charts(app, client, demo, sandbox):
    _pending_binding_with_document(client, sandbox)
    signed_in(client, app, "clerk", "window")
    page = client.get("/console/").get_data(as_text=True)
    assert re.search(r'id="pending-reviews">1<', page)
    assert page.count("<svg") >= 4


def test_review_shows_the_document_inline_and_the_verified_pledge_then_approves(app, client, demo, sandbox):
    binding_id, document_id = _pending_binding_with_document(client, sandbox)
    signed_in(client, app, "clerk", "window")
    queue = client.get("/console/reviews").get_data(as_text=True)
    assert f"/console/bindings/{binding_id}" in queue
    page = client.get(f"/console/bindings/{binding_id}").get_data(as_text=True)
    assert f'<img src="/console/documents/{document_id}"' in page
    assert "签名验证通过" in page and 'id="approve"' in page
    _no_full_id_numbers(page)
    image = client.get(f"/console/documents/{document_id}")
    assert image.status_code == 200 and image.data == PNG and image.headers["X-Frame-Options"] == "SAMEORIGIN"

    response = post(client, f"/console/bindings/{binding_id}/approve", {"reason": "结婚证与户口本已核验"},
                    page=f"/console/bindings/{binding_id}")

    assert response.status_code == 303
    assert "badge-active" in client.get(f"/console/bindings/{binding_id}").get_data(as_text=True)
    (event,) = _audit("binding.approve")
    assert event.actor_kind == "staff" and event.details["status"] == "active"


def test_rejecting_needs_a_reason_and_twice_is_an_invalid_state_in_chinese(app, client, demo, sandbox):
    binding_id, _ = _pending_binding_with_document(client, sandbox)
    signed_in(client, app, "clerk", "window")
    page = f"/console/bindings/{binding_id}"
    empty = post(client, f"{page}/reject", {"reason": ""}, page=page)
    assert empty.status_code == 400 and "请填写原因" in empty.get_data(as_text=True)
    assert post(client, f"{page}/reject", {"reason": "材料不清晰"}, page=page).status_code == 303
    again = post(client, f"{page}/approve", {"reason": ""}, page=page)
    assert again.status_code == 422
    assert "不能进行此操作" in again.get_data(as_text=True)  # the service's own message, in Chinese
    assert "{" not in again.get_data(as_text=True).split("<main")[1][:200]  # no JSON envelope


def test_an_auditor_has_no_action_buttons_and_a_forged_post_is_refused(app, client, demo, sandbox):
    binding_id, _ = _pending_binding_with_document(client, sandbox)
    signed_in(client, app, "viewer", "auditor")
    page = client.get(f"/console/bindings/{binding_id}").get_data(as_text=True)
    assert 'id="approve"' not in page and 'id="reject"' not in page and 'id="unbind"' not in page
    for path, data in ((f"/console/bindings/{binding_id}/approve", {"reason": ""}),
                       (f"/console/bindings/{binding_id}/unbind", {"reason": "x"}),
                       ("/console/window-binding", {}), ("/console/suspensions", {"reason": "x"}),
                       ("/console/filings", {}), ("/console/certifications", {}),
                       ("/console/deliveries/1/resend", {"reason": "x"}), ("/console/suspensions/1/lift", {})):
        response = post(client, path, data)
        assert response.status_code == 403, path
        assert "无权" in response.get_data(as_text=True)
    with app_session() as session, session.begin():
        assert session.get(Binding, binding_id).status == "pending_review"


def _window_form(**changes):
    name, card = PEOPLE[CHILD]
    return {"owner_id_number": OWNER, "beneficiary_name": name, "beneficiary_id_number": CHILD,
            "beneficiary_card_no": card, "relationship": "child", "proofs_checked": "y", "pledge_signed": "y",
            **changes}


def test_a_window_binding_is_active_at_once_and_prints_a_certificate(app, client, demo):
    signed_in(client, app, "clerk", "window")
    data = _window_form(scan=(io.BytesIO(PNG), "scan.png"))
    response = post(client, "/console/window-binding", data, page="/console/window-binding",
                    content_type="multipart/form-data")
    assert response.status_code == 303
    certificate = client.get(response.headers["Location"])
    html = certificate.get_data(as_text=True)
    assert certificate.status_code == 200
    assert "绑定凭证" in html and "生效" in html and "<svg" in html and "/console/attestations/" in html
    assert "**明" in html and OWNER[:3] + "*" * 11 + OWNER[-4:] in html
    _no_full_id_numbers(html)
    with app_session() as session, session.begin():
        binding = session.scalars(select(Binding)).one()
        assert (binding.status, binding.channel) == ("active", "window")
    css = client.get("/console/static/console.css").get_data(as_text=True)
    assert "@media print" in css
    verify = client.get(f"/console/attestations/{binding.id}").get_data(as_text=True)
    assert "存证签名有效" in verify


def test_a_window_binding_error_is_chinese_and_the_typed_numbers_are_not_sent_back(app, client, demo):
    signed_in(client, app, "clerk", "window")
    response = post(client, "/console/window-binding", _window_form(beneficiary_card_no="M00000000000000"),
                    page="/console/window-binding")
    html = response.get_data(as_text=True)
    assert response.status_code == 422 and "不一致" in html
    _no_full_id_numbers(html)


def test_a_window_binding_needs_the_pledge_signed_and_proofs_checked(app, client, demo):
    signed_in(client, app, "clerk", "window")
    response = post(client, "/console/window-binding", _window_form(pledge_signed=""), page="/console/window-binding")
    assert response.status_code == 422
    with app_session() as session, session.begin():
        assert session.scalars(select(Binding)).all() == []


def test_the_person_look_up_shows_everything_masked_and_is_audit_logged(app, client, demo, sandbox):
    make_binding(app, OWNER, CHILD, "child")
    signed_in(client, app, "clerk", "window")
    response = post(client, "/console/persons", {"id_number": OWNER}, page="/console/persons")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "*伟" in html and OWNER[:3] + "*" * 11 + OWNER[-4:] in html
    assert "3,500.00" in html and "**明" in html and "0001" in html  # balance, binding, card last 4
    for heading in ("年度共济额度", "作为账户所有人的绑定", "异地就医备案", "慢性病认定", "暂停记录", "通知",
                    "共济授权记录"):
        assert heading in html
    _no_full_id_numbers(html)
    assert "M53262100000001" not in html
    (event,) = _audit("person.lookup")
    assert OWNER not in str(event.details) and event.target_id == person_id(app, OWNER)


def test_an_invalid_id_number_is_a_chinese_error_without_echo(app, client, demo):
    signed_in(client, app, "clerk", "auditor")
    wrong = OWNER[:-1] + ("0" if OWNER[-1] != "0" else "1")
    response = post(client, "/console/persons", {"id_number": wrong}, page="/console/persons")
    html = response.get_data(as_text=True)
    assert response.status_code == 422 and "身份证号码" in html and wrong not in html


def test_the_look_up_is_a_post_a_get_with_the_number_shows_nothing(app, client, demo):
    signed_in(client, app, "clerk", "window")
    html = client.get("/console/persons", query_string={"id_number": OWNER}).get_data(as_text=True)
    assert "*伟" not in html


def test_only_admins_suspend_and_lift_and_the_page_shows_the_state(app, client, demo):
    make_binding(app, OWNER, CHILD, "child")
    signed_in(client, app, "clerk", "window")
    assert post(client, "/console/suspensions", {"scope": "owner", "id_number": OWNER, "reason": "套现"},
                page="/console/suspensions").status_code == 403
    admin = app.test_client()
    signed_in(admin, app, "boss", "admin")
    response = post(admin, "/console/suspensions", {"scope": "owner", "id_number": OWNER, "reason": "套现"},
                    page="/console/suspensions")
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="suspension-created"' in html and "*伟" in html
    _no_full_id_numbers(html)
    with app_session() as session, session.begin():
        suspension = session.scalars(select(Suspension)).one()
    twice = post(admin, "/console/suspensions", {"scope": "owner", "id_number": OWNER, "reason": "again"},
                 page="/console/suspensions")
    assert twice.status_code == 422 and "该人员已被暂停" in twice.get_data(as_text=True)
    lifted = post(admin, f"/console/suspensions/{suspension.id}/lift", {"reason": "已整改"},
                  page="/console/suspensions")
    assert lifted.status_code == 303
    assert 'id="suspension-lifted"' in admin.get(lifted.headers["Location"]).get_data(as_text=True)
    assert [e.action for e in _audit("suspension.create") + _audit("suspension.lift")] == [
        "suspension.create", "suspension.lift"]


def test_a_suspended_owner_pays_nothing_in_the_next_settlement(app, client, demo, sandbox):
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    admin = app.test_client()
    signed_in(admin, app, "boss", "admin")
    post(admin, "/console/suspensions", {"scope": "owner", "id_number": OWNER, "reason": "倒卖药品"},
         page="/console/suspensions")
    before = balance(app, OWNER)
    token = user_sign_in(client, sandbox, OWNER)
    # R11/R12: the suspended owner gets no 亲情码, and the child's card draws nothing on his account.
    refused = client.post("/api/v1/vouchers", json={"person_id": person_id(app, CHILD)}, headers=bearer(token))
    assert refused.status_code == 422 and refused.get_json()["error"]["details"]["status"] == "suspended"
    result = settle_by_card(client, PEOPLE[CHILD][1], CHILD)
    assert result.status_code == 201, result.get_json()
    assert result.get_json()["copay_fen"] == 0 and balance(app, OWNER) == before


@pytest.mark.parametrize(("path", "data", "shown"), [
    ("/console/filings", {"region_prefix": "37", "valid_from": "2026-01-01", "valid_to": "2026-12-31",
                          "reason": "随子女异地居住"}, 'id="filing-created"'),
    ("/console/certifications", {"disease_code": "E11.9", "valid_from": "2026-01-01", "valid_to": "2026-12-31"},
     'id="certification-created"'),
])
def test_filings_and_certifications_show_the_resulting_state(app, client, demo, path, data, shown):
    signed_in(client, app, "clerk", "window")
    response = post(client, path, {"id_number": CHILD, **data}, page=path)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and shown in html and "**明" in html
    _no_full_id_numbers(html)
    bad = post(client, path, {"id_number": CHILD, **data, "valid_to": "2025-01-01"}, page=path)
    assert bad.status_code == 422 and "开始日期不能晚于结束日期" in bad.get_data(as_text=True)


def test_a_failed_notice_is_listed_and_resent_with_an_audit_row(app, client, sandbox):
    world = NotifyWorld(app, sandbox)
    _, delivery_id = world.failed_push(TEMPLATE_DEDUCTION)
    notifier = world.notifier
    signed_in(client, app, "clerk", "window")
    listing = client.get("/console/deliveries?state=failed").get_data(as_text=True)
    assert f'id="delivery-{delivery_id}"' in listing and "47003" in listing and "重发" in listing

    response = post(client, f"/console/deliveries/{delivery_id}/resend?state=failed", {"reason": "用户来电"},
                    page="/console/deliveries")
    notifier.drain()

    assert response.status_code == 303
    assert world.delivery(delivery_id).state == "sent"
    assert len(_audit("notice.resend")) == 1
    again = post(client, f"/console/deliveries/{delivery_id}/resend", {"reason": "again"}, page="/console/deliveries")
    assert again.status_code == 409 and "当前状态下不能进行此操作" in again.get_data(as_text=True)


def test_the_audit_log_filters_and_pages_by_keyset(app, client):
    from datetime import UTC, datetime

    with app_session() as session, session.begin():
        for i in range(60):
            audit.record(session, actor_kind="operator", actor_id=None, action="test.event", at=datetime.now(UTC),
                         details={"n": i})
    signed_in(client, app, "viewer", "auditor")
    first = client.get("/console/audit?action=test.event").get_data(as_text=True)
    assert first.count("test.event") >= 50 and "n=59" in first and "n=9<" not in first
    next_link = re.search(r'id="next-page" href="([^"]+)"', first).group(1).replace("&amp;", "&")
    second = client.get(next_link).get_data(as_text=True)
    assert "n=9<" in second and "n=59" not in second and "n=0<" in second
    today = shanghai_today()
    assert "n=1<" in client.get(f"/console/audit?action=test.event&since={today}&until={today}&cursor="
                                + next_link.split("cursor=")[1].split("&")[0]).get_data(as_text=True)
    none = client.get("/console/audit?action=test.event&until=2000-01-01").get_data(as_text=True)
    assert "n=5" not in none
    bad = client.get("/console/audit?since=yesterday")
    assert bad.status_code == 400 and "日期格式为" in bad.get_data(as_text=True)


def test_unbinding_at_the_window_needs_a_reason_and_ends_the_binding(app, client, demo):
    binding_id = make_binding(app, OWNER, CHILD, "child")
    signed_in(client, app, "clerk", "window")
    page = f"/console/bindings/{binding_id}"
    assert post(client, f"{page}/unbind", {"reason": ""}, page=page).status_code == 400
    assert post(client, f"{page}/unbind", {"reason": "本人持身份证申请解绑"}, page=page).status_code == 303
    assert "badge-unbound" in client.get(page).get_data(as_text=True)
    (event,) = _audit("binding.unbind")
    assert event.details["reason"] == "本人持身份证申请解绑"


def test_a_tampered_pledge_shows_as_failing_verification(app, client, demo, sandbox):
    from models import Pledge

    binding_id, _ = _pending_binding_with_document(client, sandbox)
    with app_session() as session, session.begin():
        pledge = session.scalars(select(Pledge).where(Pledge.binding_id == binding_id)).one()
        pledge.record = {**pledge.record, "relationship": "spouse"}
    signed_in(client, app, "clerk", "window")
    page = client.get(f"/console/bindings/{binding_id}").get_data(as_text=True)
    assert "签名验证失败" in page and "签名验证通过" not in page


def test_the_staff_api_audit_log_takes_the_same_date_range(app, client, demo):

    headers = bearer(demo.tokens["auditor1"])
    today = shanghai_today()
    assert client.get(f"/api/v1/staff/audit-log?since={today}", headers=headers).get_json()["items"]
    assert client.get("/api/v1/staff/audit-log?until=2000-01-01", headers=headers).get_json()["items"] == []
    assert client.get("/api/v1/staff/audit-log?since=nope", headers=headers).status_code == 400


def test_the_filing_certification_and_resend_services_refuse_an_auditor_themselves(app, demo):
    from datetime import UTC, datetime

    from app import errors
    from app.services import filings
    from models import StaffUser
    from notify import inbox

    with app_session() as session, session.begin():
        auditor = session.scalar(select(StaffUser.id).where(StaffUser.username == "auditor1"))
    pii, now = app.extensions["domain"].pii, datetime.now(UTC)
    day = now.date()
    with app_session() as session, pytest.raises(errors.Forbidden):
        filings.file_offsite(session, pii, auditor, CHILD, "37", day, day, now)
    with app_session() as session, pytest.raises(errors.Forbidden):
        filings.certify_chronic(session, pii, auditor, CHILD, "E11.9", day, day, now)
    with app_session() as session, pytest.raises(errors.Forbidden):
        inbox.retry_delivery(session, app.extensions["domain"].notifier, auditor, 1, "x", now)


def test_an_admin_suspends_one_binding_from_its_page(app, client, demo):
    binding_id = make_binding(app, OWNER, CHILD, "child")
    signed_in(client, app, "boss", "admin")
    page = f"/console/bindings/{binding_id}"
    assert 'id="suspend-binding"' in client.get(page).get_data(as_text=True)
    response = post(client, "/console/suspensions", {"scope": "binding", "binding_id": str(binding_id),
                                                     "reason": "核查中"}, page=page)
    assert response.status_code == 200 and 'id="suspension-created"' in response.get_data(as_text=True)
    assert "badge-suspended" in client.get(page).get_data(as_text=True)


def test_the_window_form_offers_only_the_regions_relationships(app, client, demo):
    signed_in(client, app, "clerk", "window")
    html = client.get("/console/window-binding").get_data(as_text=True)
    assert 'value="spouse"' in html and 'value="child"' in html and 'value="sibling"' not in html  # Wenshan
    response = post(client, "/console/window-binding", _window_form(relationship="sibling"),
                    page="/console/window-binding")
    assert response.status_code == 422


def test_every_console_page_that_reads_a_pledge_record_is_audit_logged(app, client, demo, sandbox):
    # The binding page, the certificate and the attestation page each read the full signed record
    # (the owner's IP among it): one pledge.read audit row each, naming the staff member and binding.
    binding_id, _document = _pending_binding_with_document(client, sandbox)
    signed_in(client, app, "viewer", "auditor")
    for path in (f"/console/bindings/{binding_id}", f"/console/bindings/{binding_id}/certificate",
                 f"/console/attestations/{binding_id}"):
        assert client.get(path).status_code == 200, path
    with app_session() as session, session.begin():
        from models import StaffUser

        viewer = session.scalar(select(StaffUser.id).where(StaffUser.username == "viewer"))
    reads = _audit("pledge.read")
    assert [(e.actor_kind, e.actor_id, e.target_kind, e.target_id) for e in reads] == [
        ("staff", viewer, "binding", binding_id)] * 3
