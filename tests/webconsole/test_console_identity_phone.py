"""Console pages for the two R21 staff actions of staff_api/identity.py: the reserved phone number
(预留手机号) and the window identity link (窗口实名核验). Same services, roles and audit rows as the
API; Chinese errors from the catalogue; nothing but masked values in the HTML (R17)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.demo import DEMO_PHONES
from app.extensions import app_session
from models import AuditEvent, IdentityLinkCode, Person, User
from tests.binding_helpers import CHILD, NEIGHBOUR, OWNER, PARENT, SPOUSE
from tests.helpers import bearer, random_openid, sign_in_wechat
from tests.money_helpers import person_id
from tests.webconsole.helpers import csrf, post, signed_in

PHONE = "/console/persons/phone"
LINK = "/console/identity-links"
NEW_PHONE = "13800009999"
FULL_NUMBERS = [OWNER, SPOUSE, CHILD, PARENT, NEIGHBOUR]


def _masked_only(html: str) -> None:
    for number in FULL_NUMBERS:
        assert number not in html and number[6:14] not in html
    for phone in [NEW_PHONE, *DEMO_PHONES.values()]:
        assert phone not in html


def _audit(action: str) -> list[AuditEvent]:
    with app_session() as session, session.begin():
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def _reserved_phone_bidx(app, id_number: str) -> str | None:
    with app_session() as session, session.begin():
        return session.scalar(select(Person.phone_bidx).where(Person.id == person_id(app, id_number)))


def _window_code(client, sandbox) -> tuple[str, int]:
    """A mini-program user (not yet verified) asks for a window code: (code, user id)."""
    token = sign_in_wechat(client, sandbox, random_openid())["access_token"]
    response = client.post("/api/v1/me/identity/window-code", headers=bearer(token))
    assert response.status_code == 201, response.get_json()
    with app_session() as session, session.begin():
        user_id = session.scalar(select(IdentityLinkCode.user_id).order_by(IdentityLinkCode.id.desc()).limit(1))
    return response.get_json()["code"], user_id


def _linked_person(user_id: int) -> int | None:
    with app_session() as session, session.begin():
        return session.get(User, user_id).person_id


# --- reserved phone number -------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["window", "admin"])
def test_a_clerk_updates_the_reserved_phone_and_sees_it_masked(app, client, demo, role):
    signed_in(client, app, "clerk", role)
    form = client.get(PHONE)
    assert form.status_code == 200 and 'id="phone-form"' in form.get_data(as_text=True)
    response = post(client, PHONE, {"id_number": SPOUSE, "phone": "138 0000 9999"}, page=PHONE)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="phone-updated"' in html
    assert "138****9999" in html and "*娜" in html and SPOUSE[:3] + "*" * 11 + SPOUSE[-4:] in html
    _masked_only(html)
    (event,) = _audit("person.phone")
    assert event.actor_kind == "staff" and event.target_id == person_id(app, SPOUSE)
    assert event.details == {"old": "138****2222", "new": "138****9999"}
    # The look-up shows the new number, masked, with the way to change it again.
    looked_up = post(client, "/console/persons", {"id_number": SPOUSE}, page="/console/persons")
    page = looked_up.get_data(as_text=True)
    assert "138****9999" in page and 'id="change-phone"' in page
    _masked_only(page)



def test_the_clerk_is_warned_when_the_number_is_already_another_persons(app, client, demo):
    signed_in(client, app, "clerk", "window")
    own = post(client, PHONE, {"id_number": SPOUSE, "phone": NEW_PHONE}, page=PHONE).get_data(as_text=True)
    assert 'id="phone-updated"' in own and 'id="phone-shared"' not in own
    response = post(client, PHONE, {"id_number": SPOUSE, "phone": DEMO_PHONES[OWNER]}, page=PHONE)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="phone-updated"' in html  # saved: families share phones
    assert 'id="phone-shared"' in html and "其他参保人" in html and "实名" in html and "窗口" in html
    assert "*伟" not in html  # whose number it also is is not shown
    _masked_only(html)


def test_the_clerk_is_told_when_phone_links_made_with_the_old_number_end(app, client, sandbox, demo):
    from tests.helpers import prove_phone_wechat

    openid = random_openid()
    token = sign_in_wechat(client, sandbox, openid)["access_token"]
    prove_phone_wechat(client, sandbox, token, openid, DEMO_PHONES[SPOUSE])
    assert client.post("/api/v1/me/identity", json={"name": "李娜", "id_number": SPOUSE, "proof": {"phone": True}},
                       headers=bearer(token)).status_code == 200
    signed_in(client, app, "clerk", "window")
    html = post(client, PHONE, {"id_number": SPOUSE, "phone": NEW_PHONE}, page=PHONE).get_data(as_text=True)
    assert 'id="phone-updated"' in html and 'id="phone-links-ended"' in html and "1 个小程序账号" in html
    _masked_only(html)
    again = post(client, PHONE, {"id_number": SPOUSE, "phone": NEW_PHONE}, page=PHONE).get_data(as_text=True)
    assert 'id="phone-links-ended"' not in again


def test_a_bad_phone_is_a_chinese_error_and_nothing_typed_is_sent_back(app, client, demo):
    signed_in(client, app, "clerk", "window")
    before = _reserved_phone_bidx(app, SPOUSE)
    response = post(client, PHONE, {"id_number": SPOUSE, "phone": "12345678901"}, page=PHONE)
    html = response.get_data(as_text=True)
    assert response.status_code == 422
    assert "手机号须为中国大陆手机号" in html and "12345678901" not in html
    _masked_only(html)
    assert _reserved_phone_bidx(app, SPOUSE) == before and _audit("person.phone") == []


def test_an_unknown_or_invalid_id_number_is_a_chinese_error(app, client, demo):
    signed_in(client, app, "clerk", "window")
    wrong = OWNER[:-1] + ("0" if OWNER[-1] != "0" else "1")
    response = post(client, PHONE, {"id_number": wrong, "phone": NEW_PHONE}, page=PHONE)
    html = response.get_data(as_text=True)
    assert response.status_code == 422 and "身份证号码" in html and wrong not in html
    _masked_only(html)
    empty = post(client, PHONE, {"id_number": "", "phone": ""}, page=PHONE)
    assert empty.status_code == 422 and "请填写身份证号码和手机号" in empty.get_data(as_text=True)


# --- window identity link --------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["window", "admin"])
def test_a_clerk_links_the_user_who_shows_the_window_code(app, client, demo, sandbox, role):
    code, user_id = _window_code(client, sandbox)
    signed_in(client, app, "clerk", role)
    form = client.get(LINK)
    assert form.status_code == 200 and 'id="identity-link-form"' in form.get_data(as_text=True)
    response = post(client, LINK, {"id_number": OWNER, "link_code": code}, page=LINK)
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="identity-linked"' in html
    assert f"#{user_id}" in html and "*伟" in html and OWNER[:3] + "*" * 11 + OWNER[-4:] in html
    _masked_only(html)
    assert _linked_person(user_id) == person_id(app, OWNER)
    (event,) = _audit("identity.window_link")
    assert event.actor_kind == "staff" and event.target_id == user_id
    assert event.details["linked"] is True and event.details["person_id"] == person_id(app, OWNER)


def test_a_wrong_used_or_expired_code_is_the_catalogues_chinese_error(app, client, demo, sandbox):
    code, user_id = _window_code(client, sandbox)
    signed_in(client, app, "clerk", "window")
    wrong = post(client, LINK, {"id_number": OWNER, "link_code": "00000000" if code != "00000000" else "11111111"},
                 page=LINK)
    assert wrong.status_code == 422
    assert "验证码无效、已使用或已过期，请重新获取。" in wrong.get_data(as_text=True)
    _masked_only(wrong.get_data(as_text=True))
    with app_session() as session, session.begin():
        session.execute(update(IdentityLinkCode).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    expired = post(client, LINK, {"id_number": OWNER, "link_code": code}, page=LINK)
    assert expired.status_code == 422
    assert "验证码无效、已使用或已过期，请重新获取。" in expired.get_data(as_text=True)
    assert _linked_person(user_id) is None
    assert [e.details["result"] for e in _audit("identity.window_link")] == ["NOT_FOUND", "NOT_FOUND"]


def test_a_used_code_cannot_link_again(app, client, demo, sandbox):
    code, _user_id = _window_code(client, sandbox)
    signed_in(client, app, "clerk", "window")
    assert post(client, LINK, {"id_number": OWNER, "link_code": code}, page=LINK).status_code == 200
    again = post(client, LINK, {"id_number": SPOUSE, "link_code": code}, page=LINK)
    assert again.status_code == 422 and "验证码无效" in again.get_data(as_text=True)


# --- roles, CSRF, menu -----------------------------------------------------------------------------


def test_an_auditor_gets_403_and_no_form_and_no_menu_entry(app, client, demo, sandbox):
    code, user_id = _window_code(client, sandbox)
    signed_in(client, app, "viewer", "auditor")
    before = _reserved_phone_bidx(app, SPOUSE)
    for path, form_id, data in ((PHONE, "phone-form", {"id_number": SPOUSE, "phone": NEW_PHONE}),
                                (LINK, "identity-link-form", {"id_number": OWNER, "link_code": code})):
        page = client.get(path)
        assert page.status_code == 403 and form_id not in page.get_data(as_text=True)
        assert "无权" in page.get_data(as_text=True)
        forged = post(client, path, data)
        assert forged.status_code == 403 and form_id not in forged.get_data(as_text=True)
    assert _reserved_phone_bidx(app, SPOUSE) == before and _linked_person(user_id) is None
    assert _audit("person.phone") == [] and _audit("identity.window_link") == []
    menu = client.get("/console/").get_data(as_text=True)
    assert PHONE not in menu and LINK not in menu
    persons = client.get("/console/persons").get_data(as_text=True)
    assert 'id="to-phone"' not in persons and 'id="to-identity-link"' not in persons


def test_the_menu_and_the_look_up_page_lead_a_clerk_to_both_forms(app, client, demo):
    signed_in(client, app, "clerk", "window")
    menu = client.get("/console/").get_data(as_text=True)
    assert f'href="{PHONE}"' in menu and f'href="{LINK}"' in menu
    assert "预留手机号" in menu and "窗口实名核验" in menu
    persons = client.get("/console/persons").get_data(as_text=True)
    assert 'id="to-phone"' in persons and 'id="to-identity-link"' in persons


def test_a_post_without_the_csrf_token_is_refused(app, client, demo, sandbox):
    code, user_id = _window_code(client, sandbox)
    signed_in(client, app, "clerk", "window")
    before = _reserved_phone_bidx(app, SPOUSE)
    for path, data in ((PHONE, {"id_number": SPOUSE, "phone": NEW_PHONE}),
                       (LINK, {"id_number": OWNER, "link_code": code})):
        missing = client.post(path, data=data)
        assert missing.status_code == 400 and "页面已过期" in missing.get_data(as_text=True)
        forged = client.post(path, data={**data, "csrf_token": csrf(client, path)[:-2] + "xx"})
        assert forged.status_code == 400
    assert _reserved_phone_bidx(app, SPOUSE) == before and _linked_person(user_id) is None
    assert _audit("person.phone") == [] and _audit("identity.window_link") == []


# --- record reads and the read replica -------------------------------------------------------------


def test_the_consoles_plain_reads_go_through_read_session_like_the_staff_api(make_app, demo):
    """With an unreachable replica every plain read is counted as sent to the primary ("replica_down")
    — so it went through ``read_session()`` — and still answers; the audit-logged look-up and the
    forms never ask for the replica."""
    from app.replica import READS
    from tests.ops_helpers import free_port

    def reads() -> float:
        return sum(s.value for m in READS.collect() for s in m.samples
                   if s.name == "copay_record_reads_total" and s.labels["reason"] == "replica_down")

    app = make_app(DATABASE_REPLICA_URL=f"postgresql://copay@127.0.0.1:{free_port()}/nothing",
                   REPLICA_MAX_LAG_SECONDS=0.5)
    with app.app_context():
        client = app.test_client()
        signed_in(client, app, "clerk", "admin")  # admin: the audit log is not the window's
        writers = app.extensions["db.recent_writers"]
        writers._local.clear()  # as if the sign-in (a write) were long ago
        if writers.redis is not None:
            writers.redis.flushdb()
        before = reads()
        for path in ("/console/", "/console/audit", "/console/deliveries", "/console/suspensions"):
            assert client.get(path).status_code == 200, path
        assert reads() == before + 4  # one per page: overview, audit log, deliveries, suspensions
        token = csrf(client, "/console/persons")
        writers._local.clear()
        counted = reads()
        response = client.post("/console/persons", data={"csrf_token": token, "id_number": SPOUSE})
        assert response.status_code == 200 and "*娜" in response.get_data(as_text=True)
        assert reads() == counted  # audit-logged: the primary, without asking the replica
        response = client.post(PHONE, data={"csrf_token": token, "id_number": SPOUSE, "phone": NEW_PHONE})
        assert response.status_code == 200 and reads() == counted
