"""Whose words a suspension's reason is (R11, R16, R17).

The reason staff type when they suspend is about the person suspended — an owner caught reselling
drugs, a beneficiary using someone else's voucher. The suspended person reads it (as do staff and
auditors); the other party of each binding it touches learns the fact — co-pay is suspended, from
the record's time — in a standard text, never staff's words about another adult. A pair (binding)
suspension is of both people of the binding: both read its reason.
"""

from __future__ import annotations

import json

from sqlalchemy import select

from app.demo import CHILD, OWNER, PARENT, SPOUSE
from app.extensions import app_session
from models import Notice
from tests.binding_helpers import bind, created, sign_in
from tests.helpers import bearer

OWNER_REASON = "经查倒卖药品套现"
LIFT_REASON = "申诉材料核实无误"
OWNER_SUSPENDED_ZH = "账户所有人的共济使用已暂停，暂停期间其个人账户不再为您支付。"
OWNER_RESUMED_ZH = "账户所有人的共济使用已恢复。"
MEMBER_SUSPENDED_ZH = "该家庭成员的共济支付已暂停，暂停期间您的个人账户不再为其支付。"
MEMBER_RESUMED_ZH = "该家庭成员的共济支付已恢复。"


def suspend(client, demo, **body):
    response = client.post("/api/v1/staff/suspensions", json=body, headers=bearer(demo.tokens["admin1"]))
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def lift(client, demo, suspension_id, **body):
    response = client.post(f"/api/v1/staff/suspensions/{suspension_id}/lift", json=body,
                           headers=bearer(demo.tokens["admin1"]))
    assert response.status_code == 200, response.get_json()


def reasons(client, token, event, **headers):
    response = client.get("/api/v1/records/authorizations", headers={**bearer(token), **headers})
    assert response.status_code == 200
    return [r["reason"] for r in response.get_json()["items"] if r["event"] == event]


def staff_reasons(client, demo, binding_id, event):
    response = client.get(f"/api/v1/staff/bindings/{binding_id}/authorizations",
                          headers=bearer(demo.tokens["auditor1"]))
    return [r["reason"] for r in response.get_json()["items"] if r["event"] == event]


def notices_of(person_token, client):
    return json.dumps(client.get("/api/v1/notifications", headers=bearer(person_token)).get_json(),
                      ensure_ascii=False)


def stored_notice_contents() -> str:
    with app_session() as session, session.begin():
        return json.dumps([n.content for n in session.scalars(select(Notice))], ensure_ascii=False)


def test_r16_an_owners_suspension_reason_is_theirs_their_beneficiaries_see_the_fact(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    to_child = created(bind(client, owner, CHILD, "child"))
    created(bind(client, owner, PARENT, "parent"))
    child, parent = sign_in(client, sandbox, CHILD), sign_in(client, sandbox, PARENT)
    suspension = suspend(client, demo, owner_id_number=OWNER, reason=OWNER_REASON)

    for member in (child, parent):
        assert reasons(client, member, "suspended") == [OWNER_SUSPENDED_ZH]
        assert OWNER_REASON not in notices_of(member, client)
    assert "suspended" in notices_of(child, client)  # the beneficiary is still told of the fact
    assert OWNER_REASON not in stored_notice_contents()  # nor kept in their inbox for a later client to show
    # the owner, whose conduct it is, and staff read the reason
    assert reasons(client, owner, "suspended") == [OWNER_REASON, OWNER_REASON]
    assert staff_reasons(client, demo, to_child["id"], "suspended") == [OWNER_REASON]

    lift(client, demo, suspension["id"], reason=LIFT_REASON)
    assert reasons(client, child, "lifted") == [OWNER_RESUMED_ZH]
    assert reasons(client, owner, "lifted") == [LIFT_REASON, LIFT_REASON]
    assert staff_reasons(client, demo, to_child["id"], "lifted") == [LIFT_REASON]
    # in the reader's language, like every other message of the service
    english = reasons(client, child, "suspended", **{"Accept-Language": "en"})
    assert english == ["Co-pay from the account owner is suspended: their account pays nothing for you meanwhile."]


def test_r16_a_beneficiarys_suspension_reason_is_theirs_the_owners_paying_for_them_see_the_fact(
        client, sandbox, demo):
    owner, spouse = sign_in(client, sandbox, OWNER), sign_in(client, sandbox, SPOUSE)
    created(bind(client, owner, CHILD, "child"))
    created(bind(client, spouse, CHILD, "child"))
    child = sign_in(client, sandbox, CHILD)
    suspension = suspend(client, demo, beneficiary_id_number=CHILD, reason="冒用他人医保凭证")
    lift(client, demo, suspension["id"], reason=LIFT_REASON)

    for payer in (owner, spouse):
        assert reasons(client, payer, "suspended") == [MEMBER_SUSPENDED_ZH]
        assert reasons(client, payer, "lifted") == [MEMBER_RESUMED_ZH]
    assert reasons(client, child, "suspended") == ["冒用他人医保凭证"] * 2
    assert reasons(client, child, "lifted") == [LIFT_REASON] * 2
    assert "冒用他人医保凭证" in stored_notice_contents()  # the beneficiary's own notice may keep it


def test_r16_a_pair_suspension_is_of_both_people_of_the_binding_and_both_read_its_reason(client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    binding = created(bind(client, owner, CHILD, "child"))
    child = sign_in(client, sandbox, CHILD)
    suspend(client, demo, binding_id=binding["id"], reason="该绑定下多次超量购药")
    assert reasons(client, owner, "suspended") == ["该绑定下多次超量购药"]
    assert reasons(client, child, "suspended") == ["该绑定下多次超量购药"]


def test_r16_a_binding_made_while_the_owner_is_suspended_shows_its_beneficiary_only_the_fact(
        client, sandbox, demo):
    owner = sign_in(client, sandbox, OWNER)
    created(bind(client, owner, CHILD, "child"))
    suspend(client, demo, owner_id_number=OWNER, reason=OWNER_REASON)
    later = created(bind(client, owner, SPOUSE, "spouse"))  # the suspension is carried onto it
    spouse = sign_in(client, sandbox, SPOUSE)
    assert reasons(client, spouse, "suspended") == [OWNER_SUSPENDED_ZH]
    assert OWNER_REASON not in notices_of(spouse, client) and OWNER_REASON not in stored_notice_contents()
    assert staff_reasons(client, demo, later["id"], "suspended") == [OWNER_REASON]


def test_a_suspension_record_whose_scope_is_unknown_shows_no_party_its_reason():
    # Fail closed: a record that does not say whose suspension it was is nobody's to read.
    from app.services.authorizations import user_reason

    for role in ("owner", "beneficiary"):
        for details in ({}, {"scope": "other"}, {"scope": ["owner"]}, None):
            assert user_reason("suspended", details, "套现", role, "zh") == "该绑定下的家庭共济已暂停。"
            assert user_reason("lifted", details, "复核", role, "en") == "Co-pay under this binding has resumed."
    assert user_reason("unbound", {}, "孩子已工作", "beneficiary", "zh") == "孩子已工作"  # other events: as written
