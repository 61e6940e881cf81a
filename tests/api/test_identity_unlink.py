"""The window's remedy (R21): staff end an account's identity link.

A person whose identity another account took — a relative's WeChat real-name, a window code they were
tricked into showing, an old phone proof — reads the "another account" notice and goes to the window,
as it tells them. Staff look the person up, see the accounts linked to them (masked) and end the one
that is not theirs: that account acts on no person any more (its token still signs in), must prove who
it is again, and the person's inbox says so; audited with the clerk and the reason.
"""

from __future__ import annotations

from sqlalchemy import select

from app.demo import DEMO_PHONES, OWNER, SPOUSE
from app.extensions import app_session
from models import AuditEvent, User
from tests.helpers import (
    bearer,
    me,
    prove_identity_wechat,
    prove_phone_wechat,
    random_openid,
    sign_in_alipay,
    sign_in_wechat,
    signed_in_person,
)
from tests.money_helpers import issue, settle

SEARCH = "/api/v1/staff/identity-links/search"


def end(client, staff_token, user_id, reason="本人称该账号非本人操作，已核验身份证"):
    body = {} if reason is None else {"reason": reason}
    return client.post(f"/api/v1/staff/identity-links/{user_id}/end", json=body, headers=bearer(staff_token))


def taken_over(client, sandbox):
    """张伟's own account, and a stranger's WeChat account that passed the real-name check as 张伟 (a
    relative's WeChat real-name, here the emulator's): (victim token, stranger token, stranger openid)."""
    victim = signed_in_person(client, sandbox, "张伟", OWNER)
    openid = random_openid()
    stranger = sign_in_wechat(client, sandbox, openid)["access_token"]
    assert prove_identity_wechat(client, sandbox, stranger, openid, "张伟", OWNER).status_code == 200
    return victim, stranger, openid


def test_staff_end_a_link_the_person_did_not_make_and_it_acts_on_no_person(client, sandbox, demo):
    victim, stranger, _ = taken_over(client, sandbox)
    assert client.post("/api/v1/vouchers", json={}, headers=bearer(stranger)).status_code == 201
    stranger_id, victim_id = me(client, stranger)["user"]["id"], me(client, victim)["user"]["id"]

    response = end(client, demo.tokens["window1"], stranger_id)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["user_id"] == stranger_id and body["channel"] == "wechat"
    assert body["proof"] == "platform_realname" and body["person"]["name"] == "*伟"
    seen = me(client, stranger)  # the token still works …
    assert seen["user"]["verified"] is False and seen["person"] is None and seen["account"] is None
    assert seen["user"]["must_prove_identity_again"] is True and seen["user"]["identity_proof"] is None
    # … but acts on no person: no voucher, no records, no bindings, no inbox.
    assert client.post("/api/v1/vouchers", json={}, headers=bearer(stranger)).status_code == 403
    records = client.get("/api/v1/records/deductions?role=owner", headers=bearer(stranger))
    assert records.status_code == 403 or records.get_json()["items"] == []
    assert client.get("/api/v1/bindings", headers=bearer(stranger)).status_code == 403
    assert client.get("/api/v1/notifications", headers=bearer(stranger)).get_json()["items"] == []
    # 张伟's own account is untouched and hears of it.
    assert me(client, victim)["user"]["verified"] is True and me(client, victim)["user"]["id"] == victim_id
    notices = [n for n in client.get("/api/v1/notifications", headers=bearer(victim)).get_json()["items"]
               if n["kind"] == "identity"]
    assert notices[0]["event"] == "unlinked" and "窗口" in notices[0]["message"] and "微信" in notices[0]["message"]


def test_the_ended_link_is_audited_with_the_clerk_and_the_reason_masked(app, client, sandbox, demo):
    _, stranger, _ = taken_over(client, sandbox)
    stranger_id = me(client, stranger)["user"]["id"]
    reason = f"本人来电 {DEMO_PHONES[OWNER]}，身份证 {OWNER}，称未授权"
    assert end(client, demo.tokens["admin1"], stranger_id, reason).status_code == 200
    with app_session() as session, session.begin():
        event = session.scalar(select(AuditEvent).where(AuditEvent.action == "identity.unlink"))
        staff_id = event.actor_id
    assert event.actor_kind == "staff" and staff_id is not None
    assert event.target_kind == "user" and event.target_id == stranger_id
    assert event.details["proof"] == "platform_realname" and event.details["channel"] == "wechat"
    text = event.details["reason"]
    assert OWNER not in text and DEMO_PHONES[OWNER] not in text and "称未授权" in text
    log = client.get("/api/v1/staff/audit-log?action=identity.unlink",
                     headers=bearer(demo.tokens["auditor1"])).get_json()["items"]
    assert [item["target"]["id"] for item in log] == [stranger_id]


def test_an_unknown_user_is_404_and_an_unlinked_one_409(client, sandbox, demo):
    window = demo.tokens["window1"]
    assert end(client, window, 987654321).status_code == 404
    fresh = sign_in_wechat(client, sandbox)["access_token"]
    not_linked = end(client, window, me(client, fresh)["user"]["id"])
    assert not_linked.status_code == 409 and not_linked.get_json()["error"]["code"] == "INVALID_STATE"
    _, stranger, _ = taken_over(client, sandbox)
    stranger_id = me(client, stranger)["user"]["id"]
    assert end(client, window, stranger_id).status_code == 200
    again = end(client, window, stranger_id)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "INVALID_STATE"


def test_a_reason_is_required(client, sandbox, demo):
    _, stranger, _ = taken_over(client, sandbox)
    stranger_id = me(client, stranger)["user"]["id"]
    for reason in (None, "", "   "):
        response = end(client, demo.tokens["window1"], stranger_id, reason)
        assert response.status_code == 400, (reason, response.get_json())
        assert response.get_json()["error"]["code"] == "VALIDATION_ERROR"
    assert me(client, stranger)["user"]["verified"] is True


def test_window_and_admin_end_links_auditors_and_users_may_not(client, sandbox, demo):
    _, stranger, _ = taken_over(client, sandbox)
    stranger_id = me(client, stranger)["user"]["id"]
    assert end(client, demo.tokens["auditor1"], stranger_id).status_code == 403
    assert end(client, stranger, stranger_id).status_code == 403
    assert me(client, stranger)["user"]["verified"] is True
    assert end(client, demo.tokens["admin1"], stranger_id).status_code == 200


def test_staff_see_the_accounts_linked_to_a_person_masked(client, sandbox, demo):
    victim, stranger, stranger_openid = taken_over(client, sandbox)
    alipay_user = "2088000000007001"
    other = sign_in_alipay(client, sandbox, alipay_user)["access_token"]
    sandbox.set_alipay_identity(alipay_user, "张伟", OWNER)
    assert client.post("/api/v1/me/identity", headers=bearer(other), json={
        "name": "张伟", "id_number": OWNER,
        "proof": {"alipay_auth_code": sandbox.issue_alipay_auth_code(user_id=alipay_user)}}).status_code == 200
    prove_phone_wechat(client, sandbox, stranger, stranger_openid, "13900001111")

    for who in ("window1", "admin1", "auditor1"):  # auditors read
        response = client.post(SEARCH, json={"id_number": OWNER}, headers=bearer(demo.tokens[who]))
        assert response.status_code == 200, response.get_json()
    body = response.get_json()
    text = response.get_data(as_text=True)
    assert body["person"]["name"] == "*伟" and OWNER not in text
    assert stranger_openid not in text and alipay_user not in text and "13900001111" not in text
    accounts = {a["user_id"]: a for a in body["accounts"]}
    ids = {me(client, t)["user"]["id"]: t for t in (victim, stranger, other)}
    assert set(accounts) == set(ids)
    stranger_view = accounts[me(client, stranger)["user"]["id"]]
    assert stranger_view["channel"] == "wechat" and stranger_view["proof"] == "platform_realname"
    assert stranger_view["phone"] == "139****1111" and stranger_view["proven_at"] and stranger_view["last_login_at"]
    assert accounts[me(client, other)["user"]["id"]]["channel"] == "alipay"
    # Ended links are listed no more; an unknown ID number is 404, a malformed one ID_NUMBER_INVALID.
    assert end(client, demo.tokens["window1"], stranger_view["user_id"]).status_code == 200
    after = client.post(SEARCH, json={"id_number": OWNER}, headers=bearer(demo.tokens["window1"])).get_json()
    assert stranger_view["user_id"] not in {a["user_id"] for a in after["accounts"]}
    assert client.post(SEARCH, json={"id_number": SPOUSE}, headers=bearer(demo.tokens["window1"])) \
        .get_json()["accounts"] == []
    assert client.post(SEARCH, json={"id_number": OWNER[:-1] + "0"},
                       headers=bearer(demo.tokens["window1"])).get_json()["error"]["code"] == "ID_NUMBER_INVALID"
    assert client.post(SEARCH, json={"id_number": "110101199003070011"},
                       headers=bearer(demo.tokens["window1"])).status_code == 404
    assert client.post(SEARCH, json={"id_number": OWNER}, headers=bearer(stranger)).status_code == 403


def test_a_voucher_issued_before_the_link_ended_no_longer_pays(client, sandbox, demo):
    # The stranger issues a code (it lives VOUCHER_TTL_SECONDS), then the window ends his link: the code
    # he holds must not spend 张伟's account after the window took his link away.
    _, stranger, _ = taken_over(client, sandbox)
    code = issue(client, stranger)
    assert end(client, demo.tokens["window1"], me(client, stranger)["user"]["id"]).status_code == 200
    refused = settle(client, code)
    assert refused.status_code == 422, refused.get_json()
    assert refused.get_json()["error"]["code"] == "VOUCHER_EXPIRED"


def test_the_owner_of_an_ended_account_proves_again_and_is_linked_again(client, sandbox, demo):
    # A clerk ended the wrong account: its owner proves who they are again, as GET /me asks.
    _, stranger, openid = taken_over(client, sandbox)
    assert end(client, demo.tokens["window1"], me(client, stranger)["user"]["id"]).status_code == 200
    assert prove_identity_wechat(client, sandbox, stranger, openid, "张伟", OWNER).status_code == 200
    seen = me(client, stranger)
    assert seen["user"]["verified"] is True and seen["user"]["must_prove_identity_again"] is False


def test_ending_one_link_leaves_the_users_row_as_the_migrations_leave_it(app, client, sandbox, demo):
    _, stranger, _ = taken_over(client, sandbox)
    stranger_id = me(client, stranger)["user"]["id"]
    with app_session() as session, session.begin():
        person_id = session.get_one(User, stranger_id).person_id
    assert end(client, demo.tokens["window1"], stranger_id).status_code == 200
    with app_session() as session, session.begin():
        user = session.get_one(User, stranger_id)
        assert (user.person_id, user.unproven_person_id, user.verified_at) == (None, person_id, None)
        assert (user.identity_proof, user.identity_proven_at) == (None, None)

