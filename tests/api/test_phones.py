"""Phone-number consistency (R21): proven numbers, reserved numbers, the Wenshan phone check."""

from __future__ import annotations

import json

from sqlalchemy import select

from app.demo import CHILD, DEMO_PHONES, OWNER, SPOUSE
from tests.binding_helpers import bind, bind_at_window, created, error_code, policy_dir
from tests.helpers import (
    bearer,
    prove_identity_wechat,
    prove_phone_wechat,
    random_openid,
    sign_in_alipay,
    sign_in_wechat,
)


def owner_without_phone(client, sandbox, phone=None):
    """张伟 proven by the real-name check; with ``phone``, that number proven too."""
    openid = random_openid()
    token = sign_in_wechat(client, sandbox, openid)["access_token"]
    assert prove_identity_wechat(client, sandbox, token, openid, "张伟", OWNER).status_code == 200
    if phone:
        assert prove_phone_wechat(client, sandbox, token, openid, phone).status_code == 200
    return openid, token


# --- proving a number ---------------------------------------------------------------------------


def test_a_wechat_phone_code_records_the_number_encrypted_and_masked(app, client, sandbox, demo):
    from app.extensions import app_session
    from models import User

    openid, token = owner_without_phone(client, sandbox)
    response = prove_phone_wechat(client, sandbox, token, openid, DEMO_PHONES[OWNER])
    assert response.status_code == 200
    body = response.get_json()
    assert body["phone"] == "138****1234" and body["proven_via"] == "wechat" and body["matches_reserved"] is True
    me = client.get("/api/v1/me", headers=bearer(token)).get_json()
    assert me["user"]["phone"]["number"] == "138****1234" and me["person"]["phone_matches_reserved"] is True
    with app_session() as session, session.begin():
        stored = session.scalar(select(User.phone_enc).where(User.wechat_openid == openid))
    assert stored and DEMO_PHONES[OWNER] not in stored


def test_a_used_or_forged_wechat_phone_code_is_phone_not_verified(client, sandbox, demo):
    openid, token = owner_without_phone(client, sandbox)
    sandbox.set_wechat_phone(openid, "13800001234")
    code = sandbox.issue_wechat_phone_code(openid)
    assert client.post("/api/v1/me/phone", json={"wechat_code": code}, headers=bearer(token)).status_code == 200
    for bad in (code, "forged"):
        response = client.post("/api/v1/me/phone", json={"wechat_code": bad}, headers=bearer(token))
        assert response.status_code == 422 and error_code(response) == "PHONE_NOT_VERIFIED"


def test_an_alipay_phone_response_is_verified_decrypted_and_used_once(client, sandbox, demo):
    user_id, thief_id = "2088000000008001", "2088000000008002"
    token = sign_in_alipay(client, sandbox, user_id)["access_token"]
    sandbox.set_alipay_phone(user_id, "13700005555")
    text = sandbox.alipay_phone_response(user_id)
    response = client.post("/api/v1/me/phone", json={"alipay_response": text}, headers=bearer(token))
    assert response.status_code == 200 and response.get_json()["phone"] == "137****5555"
    # Captured and replayed by another Alipay user: refused.
    thief = sign_in_alipay(client, sandbox, thief_id)["access_token"]
    replay = client.post("/api/v1/me/phone", json={"alipay_response": text}, headers=bearer(thief))
    assert error_code(replay) == "PHONE_NOT_VERIFIED"
    assert replay.get_json()["error"]["details"]["reason"] == "proof_already_used"
    # Review finding: the same signed ciphertext re-serialised (spacing, key order, an extra key) is
    # still the same proof, still used.
    outer = json.loads(text)
    for variant in (json.dumps(outer, indent=2), json.dumps(dict(reversed(list(outer.items())))),
                    json.dumps({**outer, "x": 1})):
        again = client.post("/api/v1/me/phone", json={"alipay_response": variant}, headers=bearer(thief))
        assert error_code(again) == "PHONE_NOT_VERIFIED", again.get_json()
        assert again.get_json()["error"]["details"]["reason"] == "proof_already_used"


def test_a_forged_or_refused_alipay_phone_response_is_phone_not_verified(client, sandbox, demo):
    user_id = "2088000000008003"
    token = sign_in_alipay(client, sandbox, user_id)["access_token"]
    sandbox.set_alipay_phone(user_id, "13700005555")
    forged = json.loads(sandbox.alipay_phone_response(user_id))
    forged["sign"] = forged["sign"][::-1]
    for text in (json.dumps(forged), sandbox.alipay_phone_response(user_id, refused=True), "not json"):
        response = client.post("/api/v1/me/phone", json={"alipay_response": text}, headers=bearer(token))
        assert response.status_code == 422 and error_code(response) == "PHONE_NOT_VERIFIED"


def test_a_proof_must_come_from_the_users_own_platform_and_be_exactly_one(client, sandbox, demo):
    openid, token = owner_without_phone(client, sandbox)
    wrong = client.post("/api/v1/me/phone", json={"alipay_response": "{}"}, headers=bearer(token))
    assert error_code(wrong) == "PHONE_NOT_VERIFIED"
    for body in ({}, {"wechat_code": "a", "alipay_response": "b"}):
        response = client.post("/api/v1/me/phone", json=body, headers=bearer(token))
        assert response.status_code == 400 and error_code(response) == "VALIDATION_ERROR"


# --- Wenshan: phone_check = "required" ----------------------------------------------------------


def test_an_online_binding_needs_a_proven_phone_in_wenshan(client, sandbox, demo):
    _, token = owner_without_phone(client, sandbox)
    response = bind(client, token, CHILD, "child")
    assert response.status_code == 422 and error_code(response) == "PHONE_NOT_VERIFIED"
    assert "窗口" in response.get_json()["error"]["message"]  # says to go to the service window


def test_an_online_binding_with_another_phone_is_phone_mismatch_until_the_window_updates_it(client, sandbox, demo):
    _, token = owner_without_phone(client, sandbox, phone="13811112222")
    response = bind(client, token, CHILD, "child")
    assert response.status_code == 422 and error_code(response) == "PHONE_MISMATCH"
    assert "窗口" in response.get_json()["error"]["message"]  # says to update it at the service window
    update = client.post("/api/v1/staff/persons/phone", json={"id_number": OWNER, "phone": "138 1111 2222"},
                         headers=bearer(demo.tokens["window1"]))
    assert update.status_code == 200 and update.get_json()["phone"] == "138****2222"
    assert created(bind(client, token, CHILD, "child"))["status"] == "active"


def test_window_bindings_are_not_phone_checked(client, sandbox, demo):
    assert created(bind_at_window(client, demo.tokens["window1"], OWNER, CHILD, "child"))["status"] == "active"


def test_where_phone_check_is_off_no_phone_is_needed(make_app, sandbox, demo, tmp_path):
    client = make_app(POLICY_DIR=policy_dir(tmp_path, "532600", phone_check="off")).test_client()
    _, token = owner_without_phone(client, sandbox)
    assert created(bind(client, token, CHILD, "child"))["status"] == "active"


# --- staff: reserved numbers --------------------------------------------------------------------


def test_staff_phone_updates_are_validated_audited_and_for_window_or_admin(client, sandbox, demo):
    url = "/api/v1/staff/persons/phone"
    bad = client.post(url, json={"id_number": SPOUSE, "phone": "12345"}, headers=bearer(demo.tokens["window1"]))
    assert bad.status_code == 400
    denied = client.post(url, json={"id_number": SPOUSE, "phone": "13800009999"},
                         headers=bearer(demo.tokens["auditor1"]))
    assert denied.status_code == 403
    ok = client.post(url, json={"id_number": SPOUSE, "phone": "13800009999"}, headers=bearer(demo.tokens["admin1"]))
    assert ok.status_code == 200 and ok.get_json()["person"]["name"] == "*娜"
    log = client.get("/api/v1/staff/audit-log", headers=bearer(demo.tokens["auditor1"])).get_json()["items"]
    (entry,) = [e for e in log if e["action"] == "person.phone"]
    assert entry["details"] == {"old": "138****2222", "new": "138****9999"}
    assert "13800009999" not in json.dumps(log)



def test_staff_are_told_when_the_number_is_already_another_persons_and_it_is_still_saved(client, demo):
    """Families share phones, so a number already reserved for another person is saved; the answer
    (and the audit row) says so, because that number now proves neither person's identity (R21)."""
    url, staff = "/api/v1/staff/persons/phone", bearer(demo.tokens["window1"])
    own = client.post(url, json={"id_number": SPOUSE, "phone": "13800009999"}, headers=staff)
    assert own.status_code == 200 and own.get_json()["shared_with_others"] is False
    shared = client.post(url, json={"id_number": SPOUSE, "phone": DEMO_PHONES[OWNER]}, headers=staff)
    assert shared.status_code == 200, shared.get_json()
    assert shared.get_json()["shared_with_others"] is True and shared.get_json()["phone"] == "138****1234"
    log = client.get("/api/v1/staff/audit-log", headers=bearer(demo.tokens["auditor1"])).get_json()["items"]
    assert [e["details"].get("shared_with_others") for e in log if e["action"] == "person.phone"] == [True, None]


def test_the_wenshan_phone_check_passes_on_a_shared_number_for_an_owner_proven_otherwise(client, sandbox, demo):
    """The phone check is about the owner's own number, after the owner proved who they are: a shared
    reserved number proves no identity, but 张伟 (real-name check) holding his own number still binds."""
    client.post("/api/v1/staff/persons/phone", json={"id_number": SPOUSE, "phone": DEMO_PHONES[OWNER]},
                headers=bearer(demo.tokens["window1"]))
    _, token = owner_without_phone(client, sandbox, phone=DEMO_PHONES[OWNER])
    assert created(bind(client, token, CHILD, "child"))["status"] == "active"


def test_asking_whether_another_person_reserved_a_number_is_one_index_probe(app, postgres, demo):
    """However large the registry, asking whether another person reserved the number reads the
    ``persons.phone_bidx`` index, never the table."""
    from sqlalchemy import text

    from app.extensions import app_session
    from app.services.identity import ANOTHER_RESERVER

    with app_session() as session, session.begin():
        dialect = session.get_bind().dialect
        sql = str(ANOTHER_RESERVER.params(phone_bidx="b" * 64, person_id=1)
                  .compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        if postgres:
            session.execute(text("SET LOCAL enable_seqscan = off"))  # a tiny table: see what could serve it
            plan = "\n".join(session.execute(text("EXPLAIN " + sql)).scalars())
        else:
            plan = "\n".join(row[-1] for row in session.execute(text("EXPLAIN QUERY PLAN " + sql)))
    assert "ix_persons_phone_bidx" in plan and "Seq Scan" not in plan and "SCAN persons" not in plan, plan


# --- the registry file --------------------------------------------------------------------------


def test_load_registry_validates_phones_by_row_and_keeps_a_number_a_later_file_omits(app, demo):
    from datetime import UTC, datetime

    import pytest

    from app.extensions import app_session
    from app.services.registry import RegistryInvalid, load_registry
    from models import Person

    pii = app.extensions["domain"].pii
    as_of = datetime.now(UTC).isoformat()
    row = {"id_number": CHILD, "name": "张小明", "social_card_no": "M53262100000003", "insurance_type": "resident",
           "region_code": "532621"}
    with app_session() as session, pytest.raises(RegistryInvalid) as bad:
        load_registry(session, pii, {"as_of": as_of, "persons": [
            row, dict(row, id_number=SPOUSE, name="李娜", phone="0871-1234")]}, datetime.now(UTC))
    assert any(p.startswith("persons[2]: phone:") for p in bad.value.problems)
    with app_session() as session:
        load_registry(session, pii, {"as_of": as_of, "persons": [dict(row, phone="+86 139 0000 4444")]},
                      datetime.now(UTC))
    with app_session() as session:
        load_registry(session, pii, {"as_of": as_of, "persons": [row]}, datetime.now(UTC))
    with app_session() as session, session.begin():
        stored = session.scalar(select(Person.phone_enc).where(
            Person.id_number_bidx == pii.blind_index(CHILD, kind="id_number")))
    assert pii.decrypt(stored, context="person.phone") == "13900004444"


def test_a_wechat_phone_code_of_another_account_proves_nothing(client, sandbox, demo):
    """The code names the WeChat user who pressed the button: sent with the caller's openid,
    WeChat refuses another user's code (40003), so a captured code cannot prove its number to a
    different sign-in."""
    victim = random_openid()
    sandbox.set_wechat_phone(victim, DEMO_PHONES[OWNER])
    stolen = sandbox.issue_wechat_phone_code(victim)
    _openid, attacker = owner_without_phone(client, sandbox)
    response = client.post("/api/v1/me/phone", json={"wechat_code": stolen}, headers=bearer(attacker))
    assert response.status_code == 422 and error_code(response) == "PHONE_NOT_VERIFIED"
    assert client.get("/api/v1/me", headers=bearer(attacker)).get_json()["user"]["phone"] is None
