"""Proof of identity (R21) and GET /me (R17, R18).

A name and an ID number are not secrets: they link nothing without a proof the region accepts —
WeChat's real-name check, Alipay's certified identity, the proven phone equal to the reserved
number, or a window link made by staff after checking the ID card.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.demo import CHILD, DEMO_PHONES, OWNER, SPOUSE
from app.security.id_number import make_id_number
from tests.helpers import (
    bearer,
    prove_identity_wechat,
    prove_phone_wechat,
    random_openid,
    reserve_phone,
    sign_in_alipay,
    sign_in_wechat,
    signed_in_person,
    verify_identity,
)

ACCEPTED = ["platform_realname", "phone", "window"]


def wechat_user(client, sandbox):
    openid = random_openid()
    return openid, sign_in_wechat(client, sandbox, openid)["access_token"]


def error(response):
    return response.get_json()["error"]


# --- the attack of issue 9 ---------------------------------------------------------------------


def test_name_and_id_number_from_a_second_account_link_nothing_and_spend_nothing(client, sandbox, demo):
    signed_in_person(client, sandbox, "张伟", OWNER)  # 张伟's own account
    openid, attacker = wechat_user(client, sandbox)
    sandbox.set_wechat_identity(openid, "李四", "532621198205202246")  # a real WeChat user, not 张伟

    for proof in (None, {}, {"phone": False}):
        response = verify_identity(client, attacker, "张伟", OWNER, proof)
        assert response.status_code == 422
        assert error(response)["code"] == "IDENTITY_NOT_PROVEN"
        assert error(response)["details"]["accepted_proofs"] == ACCEPTED
    # The attacker's own real-name check does not confirm 张伟.
    code = sandbox.issue_wechat_realname_code(openid)
    stolen = verify_identity(client, attacker, "张伟", OWNER, {"wechat_realname_code": code})
    assert error(stolen)["code"] == "IDENTITY_NOT_PROVEN"

    me = client.get("/api/v1/me", headers=bearer(attacker)).get_json()
    assert me["user"]["verified"] is False and me["person"] is None and me["account"] is None
    assert client.post("/api/v1/vouchers", json={}, headers=bearer(attacker)).status_code == 403
    records = client.get("/api/v1/records/deductions?role=owner", headers=bearer(attacker))
    assert records.status_code == 403 or records.get_json()["items"] == []


def test_without_a_proof_the_registry_is_not_even_read(client, sandbox, demo):
    """IDENTITY_NOT_PROVEN comes before the look-up, so strangers cannot learn who is insured."""
    _, token = wechat_user(client, sandbox)
    unknown = make_id_number("532621", date(1999, 9, 9), 999)
    assert error(verify_identity(client, token, "张伟", OWNER))["code"] == "IDENTITY_NOT_PROVEN"
    assert error(verify_identity(client, token, "谁", unknown))["code"] == "IDENTITY_NOT_PROVEN"


# --- platform_realname -------------------------------------------------------------------------


def test_wechat_real_name_links_and_me_shows_the_proof_masked_person_balance_and_policy(client, sandbox, demo):
    openid, token = wechat_user(client, sandbox)
    response = prove_identity_wechat(client, sandbox, token, openid, "张伟", OWNER)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["proof"] == "platform_realname"
    me = client.get("/api/v1/me", headers=bearer(token)).get_json()
    assert me["user"]["verified"] is True and me["user"]["identity_proof"] == "platform_realname"
    assert me["user"]["identity_proven_at"].endswith("+08:00")
    assert me["person"]["name"] == "*伟"
    assert me["person"]["id_number"] == OWNER[:3] + "*" * 11 + OWNER[-4:]
    assert me["person"]["reserved_phone"] == "138****1234"
    assert me["account"] == {"balance_fen": 350000}
    assert me["policy"]["region"] == "532600" and me["policy"]["phone_check"] == "required"
    assert me["policy"]["annual_cap_fen"] == 200000


def test_a_beneficiary_without_a_personal_account_has_no_balance(client, sandbox, demo):
    token = signed_in_person(client, sandbox, "张小明", CHILD)
    assert client.get("/api/v1/me", headers=bearer(token)).get_json()["account"] is None


def test_wechat_real_name_needs_both_answers_to_match(client, sandbox, demo):
    openid, token = wechat_user(client, sandbox)
    sandbox.set_wechat_identity(openid, None)  # no WeChat Pay real name: V_OP_NA
    code = sandbox.issue_wechat_realname_code(openid)
    response = verify_identity(client, token, "张伟", OWNER, {"wechat_realname_code": code})
    assert error(response)["code"] == "IDENTITY_NOT_PROVEN"
    assert error(response)["details"]["reason"] == "platform_says_no"


def test_a_real_name_code_works_once(client, sandbox, demo):
    openid, token = wechat_user(client, sandbox)
    sandbox.set_wechat_identity(openid, "张伟", OWNER)
    code = sandbox.issue_wechat_realname_code(openid)
    assert verify_identity(client, token, "张伟", OWNER, {"wechat_realname_code": code}).status_code == 200
    again = verify_identity(client, token, "张伟", OWNER, {"wechat_realname_code": code})
    assert error(again)["details"]["reason"] == "realname_code_invalid"


def test_a_proven_identity_that_is_not_in_the_registry_is_identity_mismatch(client, sandbox, demo):
    unknown = make_id_number("532621", date(1999, 9, 9), 999)
    openid, token = wechat_user(client, sandbox)
    response = prove_identity_wechat(client, sandbox, token, openid, "李四", unknown)
    assert error(response)["code"] == "IDENTITY_MISMATCH"
    assert error(response)["details"] == {}


def test_a_proven_person_under_another_name_in_the_registry_is_the_same_identity_mismatch(client, sandbox, demo):
    openid, token = wechat_user(client, sandbox)
    response = prove_identity_wechat(client, sandbox, token, openid, "张三", OWNER)  # WeChat knows them as 张三
    assert error(response)["code"] == "IDENTITY_MISMATCH" and error(response)["details"] == {}


def test_alipay_certified_identity_links(client, sandbox, demo):
    user_id = "2088000000009001"
    token = sign_in_alipay(client, sandbox, user_id)["access_token"]
    sandbox.set_alipay_identity(user_id, "张伟", OWNER)
    code = sandbox.issue_alipay_auth_code(user_id=user_id)
    response = verify_identity(client, token, "张伟", OWNER, {"alipay_auth_code": code})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["proof"] == "platform_realname"


@pytest.mark.parametrize("case", ["uncertified", "other_person", "other_account", "wechat_user"])
def test_alipay_certification_must_be_this_accounts_and_this_persons(client, sandbox, demo, case):
    user_id = "2088000000009002"
    token = sign_in_alipay(client, sandbox, user_id)["access_token"]
    sandbox.set_alipay_identity(user_id, "张伟", OWNER, certified=case != "uncertified")
    if case == "other_person":
        sandbox.set_alipay_identity(user_id, "李娜", SPOUSE)
    code = sandbox.issue_alipay_auth_code(user_id=user_id)
    if case == "other_account":  # 张伟's real account gave a code; someone else's sign-in uses it
        other = "2088000000009003"
        sandbox.set_alipay_identity(other, "张伟", OWNER)
        code = sandbox.issue_alipay_auth_code(user_id=other)
    if case == "wechat_user":
        _, token = wechat_user(client, sandbox)
    response = verify_identity(client, token, "张伟", OWNER, {"alipay_auth_code": code})
    assert error(response)["code"] == "IDENTITY_NOT_PROVEN"


def test_a_platform_outage_is_upstream_unavailable_and_links_nothing(client, sandbox, demo):
    openid, token = wechat_user(client, sandbox)
    sandbox.set_wechat_identity(openid, "张伟", OWNER)
    code = sandbox.issue_wechat_realname_code(openid)
    sandbox.set_down("wechat")
    try:
        response = verify_identity(client, token, "张伟", OWNER, {"wechat_realname_code": code})
    finally:
        sandbox.set_down("wechat", False)
    assert response.status_code == 503
    assert client.get("/api/v1/me", headers=bearer(token)).get_json()["user"]["verified"] is False


# --- phone -------------------------------------------------------------------------------------


def test_the_proven_phone_equal_to_the_reserved_number_links(client, sandbox, demo):
    openid, token = wechat_user(client, sandbox)
    assert prove_phone_wechat(client, sandbox, token, openid, DEMO_PHONES[OWNER]).status_code == 200
    response = verify_identity(client, token, "张伟", OWNER, {"phone": True})
    assert response.status_code == 200 and response.get_json()["proof"] == "phone"


def test_another_phone_or_no_proven_phone_is_not_proven(client, sandbox, demo):
    openid, token = wechat_user(client, sandbox)
    refused = verify_identity(client, token, "张伟", OWNER, {"phone": True})
    assert error(refused)["details"]["reason"] == "phone_not_proven"
    prove_phone_wechat(client, sandbox, token, openid, "13811112222")
    response = verify_identity(client, token, "张伟", OWNER, {"phone": True})
    assert error(response)["code"] == "IDENTITY_NOT_PROVEN"
    assert error(response)["details"]["reason"] == "phone_does_not_prove_this_identity"
    # The child has no reserved number: the phone cannot prove who they are.
    no_reserved = error(verify_identity(client, token, "张小明", CHILD, {"phone": True}))
    assert (no_reserved["code"], no_reserved["details"]["reason"]) == ("IDENTITY_NOT_PROVEN",
                                                                       "phone_does_not_prove_this_identity")


def test_a_proven_phone_cannot_be_used_to_ask_who_is_insured(client, sandbox, demo):
    # Review finding: with one's own proven phone, "not in the registry", "wrong name", "another
    # reserved number" and "no reserved number" must all give the same answer.
    openid, token = wechat_user(client, sandbox)
    prove_phone_wechat(client, sandbox, token, openid, "13811112222")
    answers = [error(verify_identity(client, token, name, number, {"phone": True}))
               for name, number in (("张伟", OWNER), ("张小明", CHILD), ("王五", OWNER),
                                    ("张三", "11010519491231002X"))]
    assert len({(a["code"], a["message"], str(a["details"])) for a in answers}) == 1, answers


def test_a_number_reserved_for_two_persons_proves_neither(client, sandbox, demo):
    # Review finding (reproduced): families reserve one member's phone for others. 李娜's reserved
    # number set to 张伟's: with a fresh WeChat sign-in that proved his own phone, 张伟 linked himself
    # as 李娜 by phone (200), then could bind her account to himself and spend it (Wenshan's phone
    # check passes on the same number; no consent is asked).
    reserve_phone(client, demo, SPOUSE, DEMO_PHONES[OWNER])
    openid, token = wechat_user(client, sandbox)
    assert prove_phone_wechat(client, sandbox, token, openid, DEMO_PHONES[OWNER]).status_code == 200
    answers = [verify_identity(client, token, name, number, {"phone": True}) for name, number in (("李娜", SPOUSE),
                                                                                        ("张伟", OWNER))]
    for response in answers:
        assert response.status_code == 422, response.get_json()
        assert error(response)["code"] == "IDENTITY_NOT_PROVEN"
        # Why, and which proofs would still do — not whose number it also is, nor how many share it.
        assert error(response)["details"] == {"reason": "reserved_phone_shared",
                                              "accepted_proofs": ["platform_realname", "window"]}
        assert "窗口" in error(response)["message"] and "实名" in error(response)["message"]
    assert answers[0].get_data() == answers[1].get_data()  # 李娜's answer and 张伟's: the same bytes
    me = client.get("/api/v1/me", headers=bearer(token)).get_json()
    assert me["user"]["verified"] is False and me["person"] is None and me["account"] is None

    # Another proof still links (here WeChat's real-name check, as 张伟 himself).
    assert prove_identity_wechat(client, sandbox, token, openid, "张伟", OWNER).status_code == 200


def test_a_number_reserved_by_exactly_one_person_still_proves(client, sandbox, demo):
    reserve_phone(client, demo, SPOUSE, DEMO_PHONES[OWNER])
    reserve_phone(client, demo, SPOUSE, "13800009999")  # the window gives 李娜 her own number again
    openid, token = wechat_user(client, sandbox)
    prove_phone_wechat(client, sandbox, token, openid, DEMO_PHONES[OWNER])
    response = verify_identity(client, token, "张伟", OWNER, {"phone": True})
    assert response.status_code == 200 and response.get_json()["proof"] == "phone"


def test_a_shared_number_is_told_only_to_whom_the_number_and_identity_match(app, client, sandbox, demo):
    """The shared answer is given only when name, ID number and the reserved number all match; every
    other phone attempt keeps the one answer, so it tells no stranger whose number is shared."""
    from app.extensions import app_session
    from models import AuditEvent

    reserve_phone(client, demo, SPOUSE, DEMO_PHONES[OWNER])
    openid, token = wechat_user(client, sandbox)
    prove_phone_wechat(client, sandbox, token, openid, "13811112222")
    for name, number in (("张伟", OWNER), ("李娜", SPOUSE), ("王五", OWNER)):
        assert error(verify_identity(client, token, name, number, {"phone": True}))["details"]["reason"] == (
            "phone_does_not_prove_this_identity")
    prove_phone_wechat(client, sandbox, token, openid, DEMO_PHONES[OWNER])
    assert error(verify_identity(client, token, "王五", OWNER, {"phone": True}))["details"]["reason"] == (
        "phone_does_not_prove_this_identity")
    assert error(verify_identity(client, token, "李娜", SPOUSE, {"phone": True}))["details"]["reason"] == (
        "reserved_phone_shared")
    with app_session() as session, session.begin():
        last = session.scalars(select(AuditEvent).where(AuditEvent.action == "identity.verify")
                               .order_by(AuditEvent.id.desc()).limit(1)).one()
    assert last.details["why"] == "reserved_phone_shared" and last.details["result"] == "IDENTITY_NOT_PROVEN"


def test_a_region_that_does_not_accept_a_proof_refuses_it(app, sandbox, demo):
    from app.errors import IdentityNotProven
    from app.extensions import app_session
    from app.services import identity
    from models import User

    domain = app.extensions["domain"]
    policy = replace(domain.policy, identity_proof=frozenset({"window"}))
    with app_session() as session, session.begin():
        user = User(channel="wechat", wechat_openid=random_openid(), created_at=datetime.now(UTC))
        session.add(user)
        session.flush()
        user_id = user.id
    with app_session() as session, pytest.raises(IdentityNotProven) as refused:
        identity.verify_identity(session, domain.pii, policy, domain.platforms, user_id, "张伟", OWNER,
                                 {"phone": True}, datetime.now(UTC))
    assert refused.value.details == {"reason": "proof_not_accepted_here", "accepted_proofs": ["window"]}


# --- window ------------------------------------------------------------------------------------


def window_code(client, token):
    response = client.post("/api/v1/me/identity/window-code", headers=bearer(token))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def link(client, staff_token, id_number, code):
    return client.post("/api/v1/staff/identity-links", json={"id_number": id_number, "link_code": code},
                       headers=bearer(staff_token))


def test_staff_link_a_user_who_shows_the_window_code_once(client, sandbox, demo):
    _, token = wechat_user(client, sandbox)
    issued = window_code(client, token)
    assert len(issued["code"]) == 8 and issued["ttl_seconds"] == 600
    response = link(client, demo.tokens["window1"], OWNER, issued["code"])
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["proof"] == "window"
    me = client.get("/api/v1/me", headers=bearer(token)).get_json()
    assert me["user"]["identity_proof"] == "window" and me["person"]["name"] == "*伟"
    assert link(client, demo.tokens["window1"], OWNER, issued["code"]).status_code == 404  # single use
    log = client.get("/api/v1/staff/audit-log", headers=bearer(demo.tokens["auditor1"])).get_json()["items"]
    assert any(item["action"] == "identity.window_link" for item in log)


def test_the_window_code_is_stored_hashed_and_expires(app, client, sandbox, demo):
    from app.extensions import app_session
    from models import IdentityLinkCode

    _, token = wechat_user(client, sandbox)
    code = window_code(client, token)["code"]
    with app_session() as session, session.begin():
        assert session.scalar(select(IdentityLinkCode.code_hash)) != code
        session.execute(update(IdentityLinkCode).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert link(client, demo.tokens["window1"], OWNER, code).status_code == 404


def test_only_window_and_admin_staff_link(client, sandbox, demo):
    _, token = wechat_user(client, sandbox)
    code = window_code(client, token)["code"]
    assert link(client, demo.tokens["auditor1"], OWNER, code).status_code == 403
    assert link(client, token, OWNER, code).status_code == 403
    assert link(client, demo.tokens["admin1"], OWNER, code).status_code == 201


# --- a further account -------------------------------------------------------------------------


def test_the_accounts_already_linked_hear_of_a_further_account(client, sandbox, demo):
    first = signed_in_person(client, sandbox, "张伟", OWNER)
    assert [n for n in client.get("/api/v1/notifications", headers=bearer(first)).get_json()["items"]
            if n["kind"] == "identity"] == []
    user_id = "2088000000009004"
    second = sign_in_alipay(client, sandbox, user_id)["access_token"]
    sandbox.set_alipay_identity(user_id, "张伟", OWNER)
    assert verify_identity(client, second, "张伟", OWNER,
                  {"alipay_auth_code": sandbox.issue_alipay_auth_code(user_id=user_id)}).status_code == 200
    (notice,) = [n for n in client.get("/api/v1/notifications", headers=bearer(first)).get_json()["items"]
                 if n["kind"] == "identity"]
    assert notice["event"] == "linked" and "支付宝" in notice["message"]
    assert notice["settlement_no"] is None and notice["amount_fen"] is None


# --- the rules kept from before ----------------------------------------------------------------


def test_r18_a_bad_check_digit_is_id_number_invalid(client, sandbox, demo):
    _, token = wechat_user(client, sandbox)
    wrong = OWNER[:-1] + ("0" if OWNER[-1] != "0" else "1")
    response = verify_identity(client, token, "张伟", wrong, {"phone": True})
    assert response.status_code == 422
    assert error(response)["code"] == "ID_NUMBER_INVALID"


def test_r17_a_raw_id_number_appears_in_no_response_body_and_no_log_line(client, sandbox, demo, caplog):
    caplog.set_level("DEBUG")
    from app.logs import JsonFormatter

    openid, token = wechat_user(client, sandbox)
    bodies = [
        verify_identity(client, token, "李四", OWNER).get_data(as_text=True),
        verify_identity(client, token, "张伟", OWNER[:-1] + "0").get_data(as_text=True),
        prove_identity_wechat(client, sandbox, token, openid, "张伟", OWNER).get_data(as_text=True),
        prove_phone_wechat(client, sandbox, token, openid, DEMO_PHONES[OWNER]).get_data(as_text=True),
        client.get("/api/v1/me", headers=bearer(token)).get_data(as_text=True),
        client.get(f"/api/v1/no-such-page/{OWNER}").get_data(as_text=True),
    ]
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert lines, "the request log wrote nothing"
    for text in bodies + lines:
        assert OWNER not in text
        assert OWNER[:-1] not in text
        assert DEMO_PHONES[OWNER] not in text
    assert "张伟" not in "".join(bodies)


def test_identity_verification_is_rate_limited_per_user(make_app, sandbox, demo):
    """R19: per-user limit on the identity group."""
    app = make_app(RATE_LIMIT_PER_USER="2/60")
    client = app.test_client()
    token = sign_in_wechat(client, sandbox)["access_token"]
    assert verify_identity(client, token, "李四", OWNER).status_code == 422
    assert verify_identity(client, token, "李四", OWNER).status_code == 422
    limited = verify_identity(client, token, "张伟", OWNER)
    assert limited.status_code == 429
    assert "Retry-After" in limited.headers


def test_the_already_linked_account_gets_a_push_where_a_receipt_template_is_configured(make_app, sandbox, demo):
    from tests.conftest import TEMPLATE_RECEIPT

    app = make_app(WECHAT_TEMPLATE_RECEIPT=TEMPLATE_RECEIPT)
    client = app.test_client()
    first_openid = random_openid()
    first = signed_in_person(client, sandbox, "张伟", OWNER, openid=first_openid)
    sandbox.grant_wechat_consent(first_openid, TEMPLATE_RECEIPT)
    client.post("/api/v1/subscriptions", headers=bearer(first), json={
        "channel": "wechat", "mode": "one_time", "results": {TEMPLATE_RECEIPT: "accept"}})
    second_openid = random_openid()
    second = sign_in_wechat(client, sandbox, second_openid)["access_token"]
    assert prove_identity_wechat(client, sandbox, second, second_openid, "张伟", OWNER).status_code == 200
    app.extensions["domain"].notifier.drain()

    (message,) = sandbox.sent_messages(platform="wechat", template_id=TEMPLATE_RECEIPT)
    assert message.to == first_openid and message.data["phrase1"] == "新账号"


def test_a_window_code_is_never_one_another_user_holds_live(client, sandbox, demo, monkeypatch):
    # Review finding: with colliding live codes, the newest won — an attacker holding many codes could
    # take a victim's link at the window. A code alike to a live one is drawn again.
    from app.services import identity

    draws = iter(["12345678", "12345678", "87654321"])
    monkeypatch.setattr(identity, "_new_code", lambda: next(draws))
    _, victim = wechat_user(client, sandbox)
    _, attacker = wechat_user(client, sandbox)
    assert window_code(client, victim)["code"] == "12345678"
    assert window_code(client, attacker)["code"] == "87654321"  # not the victim's live code
    response = link(client, demo.tokens["window1"], OWNER, "12345678")
    assert response.status_code == 201
    me = client.get("/api/v1/me", headers=bearer(victim)).get_json()
    assert me["user"]["identity_proof"] == "window"
    assert client.get("/api/v1/me", headers=bearer(attacker)).get_json()["user"]["identity_proof"] is None


def test_two_live_codes_alike_link_nobody(app, client, sandbox, demo):
    from app.extensions import app_session
    from models import IdentityLinkCode

    _, first = wechat_user(client, sandbox)
    _, second = wechat_user(client, sandbox)
    code = window_code(client, first)["code"]
    window_code(client, second)
    with app_session() as session, session.begin():  # as if both were issued at the same instant
        hashes = session.scalars(select(IdentityLinkCode.code_hash).order_by(IdentityLinkCode.id)).all()
        session.execute(update(IdentityLinkCode).values(code_hash=hashes[0]))
    assert link(client, demo.tokens["window1"], OWNER, code).status_code == 404
