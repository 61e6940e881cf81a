"""The console's remedy for a link the person did not make (R21): the look-up lists the sign-ins linked
to the person (masked, no openid) and a window clerk ends one — with a reason, a confirmation and
the session's CSRF token — through the same service as ``POST /api/v1/staff/identity-links/{id}/end``."""

from __future__ import annotations

from sqlalchemy import select

from app.demo import DEMO_PHONES
from app.extensions import app_session
from models import AuditEvent, User
from tests.binding_helpers import OWNER
from tests.helpers import bearer, prove_identity_wechat, random_openid, sign_in_wechat, signed_in_person
from tests.webconsole.helpers import csrf, post, signed_in

PERSONS = "/console/persons"


def _end(user_id: int) -> str:
    return f"/console/identity-links/{user_id}/end"


def _taken_over(client, sandbox) -> tuple[str, str, int]:
    """张伟's own account and a stranger's that passed WeChat's real-name check as him: (victim token,
    stranger openid, stranger user id)."""
    victim = signed_in_person(client, sandbox, "张伟", OWNER)
    openid = random_openid()
    stranger = sign_in_wechat(client, sandbox, openid)["access_token"]
    assert prove_identity_wechat(client, sandbox, stranger, openid, "张伟", OWNER).status_code == 200
    user_id = client.get("/api/v1/me", headers=bearer(stranger)).get_json()["user"]["id"]
    return victim, openid, user_id


def _person_id(user_id: int) -> int | None:
    with app_session() as session, session.begin():
        return session.get_one(User, user_id).person_id


def _audit() -> list[AuditEvent]:
    with app_session() as session, session.begin():
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "identity.unlink")))


def test_the_look_up_lists_the_linked_accounts_masked_and_a_clerk_ends_one(app, client, demo, sandbox):
    _victim, openid, user_id = _taken_over(client, sandbox)
    browser = app.test_client()
    signed_in(browser, app, "clerk", "window")
    page = post(browser, PERSONS, {"id_number": OWNER}, page=PERSONS)
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="linked-accounts"' in html
    assert f'id="linked-{user_id}"' in html and f'action="{_end(user_id)}"' in html
    assert "微信/支付宝实名" in html and 'data-confirm="' in html and 'name="confirmed"' in html
    assert openid not in html and OWNER not in html and DEMO_PHONES[OWNER] not in html

    token = csrf(browser, PERSONS)
    ended = browser.post(_end(user_id), data={"csrf_token": token, "reason": "本人称非本人操作", "confirmed": "y"})
    assert ended.status_code == 303 and ended.headers["Location"].endswith(f"{PERSONS}?ended={user_id}")
    shown = browser.get(ended.headers["Location"]).get_data(as_text=True)
    assert 'id="link-ended"' in shown and str(user_id) in shown
    assert _person_id(user_id) is None
    (event,) = _audit()
    assert event.actor_kind == "staff" and event.target_id == user_id and event.details["reason"] == "本人称非本人操作"
    again = post(browser, PERSONS, {"id_number": OWNER}, page=PERSONS).get_data(as_text=True)
    assert f'id="linked-{user_id}"' not in again


def test_without_the_reason_or_the_confirmation_nothing_ends(app, client, demo, sandbox):
    _victim, _openid, user_id = _taken_over(client, sandbox)
    browser = app.test_client()
    signed_in(browser, app, "clerk", "admin")
    for data in ({"reason": "本人申请"}, {"confirmed": "y"}, {"reason": "  ", "confirmed": "y"}):
        response = post(browser, _end(user_id), data, page=PERSONS)
        assert response.status_code == 400, data
        assert "请填写解除原因并勾选确认。" in response.get_data(as_text=True)
    assert _person_id(user_id) is not None and _audit() == []


def test_without_the_csrf_token_nothing_ends(app, client, demo, sandbox):
    _victim, _openid, user_id = _taken_over(client, sandbox)
    browser = app.test_client()
    signed_in(browser, app, "clerk", "window")
    refused = browser.post(_end(user_id), data={"reason": "本人申请", "confirmed": "y"})
    assert refused.status_code == 400 and _person_id(user_id) is not None


def test_an_unlinked_or_unknown_account_is_the_catalogues_chinese_error(app, client, demo, sandbox):
    _victim, _openid, user_id = _taken_over(client, sandbox)
    browser = app.test_client()
    signed_in(browser, app, "clerk", "window")
    data = {"reason": "本人申请", "confirmed": "y"}
    assert post(browser, _end(user_id), data, page=PERSONS).status_code == 303
    again = post(browser, _end(user_id), data, page=PERSONS)
    assert again.status_code == 422 and "该账号未关联任何参保人。" in again.get_data(as_text=True)
    unknown = post(browser, _end(987654321), data, page=PERSONS)
    assert unknown.status_code == 422 and "该用户不存在。" in unknown.get_data(as_text=True)


def test_an_auditor_sees_the_accounts_but_no_button_and_may_not_end(app, client, demo, sandbox):
    _victim, _openid, user_id = _taken_over(client, sandbox)
    browser = app.test_client()
    signed_in(browser, app, "viewer", "auditor")
    html = post(browser, PERSONS, {"id_number": OWNER}, page=PERSONS).get_data(as_text=True)
    assert f'id="linked-{user_id}"' in html and _end(user_id) not in html and 'name="confirmed"' not in html
    forged = post(browser, _end(user_id), {"reason": "本人申请", "confirmed": "y"}, page=PERSONS)
    assert forged.status_code == 403 and _person_id(user_id) is not None and _audit() == []
