"""Suspensions for violations (R11): owner, binding and beneficiary scope, lifting, roles, records."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.demo import CHILD, OWNER, PARENT, SPOUSE
from app.extensions import app_session
from models import AuditEvent, Suspension
from tests.binding_helpers import bind, created, error_code, records, sign_in
from tests.helpers import bearer


@pytest.fixture
def owner(client, sandbox, demo) -> str:
    return sign_in(client, sandbox, OWNER)


def suspend(client, demo, who="admin1", **body):
    return client.post("/api/v1/staff/suspensions", json=body, headers=bearer(demo.tokens[who]))


def lift(client, demo, suspension_id, who="admin1", **body):
    return client.post(f"/api/v1/staff/suspensions/{suspension_id}/lift", json=body, headers=bearer(demo.tokens[who]))


def binding_of(client, token, binding_id):
    return client.get(f"/api/v1/bindings/{binding_id}", headers=bearer(token)).get_json()


def test_r11_suspending_one_binding_stops_it_and_lifting_makes_it_active_again(client, demo, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    suspension = created(suspend(client, demo, binding_id=binding["id"], reason="转卖药品"))
    assert suspension["scope"] == "binding" and suspension["active"] is True
    assert suspension["affected_binding_ids"] == [binding["id"]]
    suspended = binding_of(client, owner, binding["id"])
    assert suspended["status"] == "suspended" and suspended["suspended"] is True
    assert suspended["effective_at"] == binding["effective_at"]
    lifted = lift(client, demo, suspension["id"], reason="复核无误")
    assert lifted.status_code == 200 and lifted.get_json()["active"] is False
    after = binding_of(client, owner, binding["id"])
    assert after["status"] == "active" and after["suspended"] is False
    history = [(r["event"], r["reason"], r["actor"]["kind"]) for r in records(client, owner)][:2]
    assert history == [("lifted", "复核无误", "staff"), ("suspended", "转卖药品", "staff")]
    actions = [(a, t) for a, t in _audit("suspension.")]
    assert actions == [("suspension.create", suspension["id"]), ("suspension.lift", suspension["id"])]


def test_r11_lifting_a_binding_suspension_after_the_owner_unbound_leaves_it_unbound(client, demo, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    suspension = created(suspend(client, demo, binding_id=binding["id"], reason="套现"))
    assert client.post(f"/api/v1/bindings/{binding['id']}/unbind", json={}, headers=bearer(owner)).status_code == 200
    lifted = lift(client, demo, suspension["id"]).get_json()
    assert lifted["affected_binding_ids"] == []
    assert binding_of(client, owner, binding["id"])["status"] == "unbound"
    assert records(client, owner)[0]["event"] == "unbound"


def test_r11_only_an_active_binding_can_be_suspended_and_only_once(client, demo, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    created(suspend(client, demo, binding_id=binding["id"], reason="套现"))
    twice = suspend(client, demo, binding_id=binding["id"], reason="套现")
    assert twice.status_code == 409 and error_code(twice) == "INVALID_STATE"
    assert suspend(client, demo, binding_id=999999, reason="x").status_code == 404


def test_r11_a_lifted_suspension_cannot_be_lifted_again(client, demo, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    suspension = created(suspend(client, demo, binding_id=binding["id"], reason="套现"))
    assert lift(client, demo, suspension["id"]).status_code == 200
    again = lift(client, demo, suspension["id"])
    assert again.status_code == 409 and error_code(again) == "INVALID_STATE"
    assert lift(client, demo, 999999).status_code == 404


def test_r11_suspending_an_owner_marks_every_live_binding_of_theirs_and_lifting_clears_it(client, sandbox, demo, owner):
    ids = [created(bind(client, owner, who, rel))["id"] for who, rel in ((CHILD, "child"), (PARENT, "parent"))]
    spouse = sign_in(client, sandbox, SPOUSE)
    spouse_binding = created(bind(client, spouse, CHILD, "child"))
    suspension = created(suspend(client, demo, owner_id_number=OWNER, reason="套现个人账户资金"))
    assert suspension["scope"] == "owner" and suspension["person"]["name"] == "*伟"
    assert sorted(suspension["affected_binding_ids"]) == sorted(ids)
    for binding_id in ids:
        view = binding_of(client, owner, binding_id)
        assert view["status"] == "active" and view["suspended"] is True  # the row consulted is the suspension
    assert binding_of(client, spouse, spouse_binding["id"])["suspended"] is False
    assert {r["binding_id"] for r in records(client, owner) if r["event"] == "suspended"} == set(ids)
    with app_session() as session, session.begin():
        row = session.get(Suspension, suspension["id"])
        assert (row.scope, row.person_id, row.lifted_at) == ("owner", suspension["person"]["person_id"], None)
    twice = suspend(client, demo, owner_id_number=OWNER, reason="again")
    assert twice.status_code == 409
    lift(client, demo, suspension["id"])
    assert all(binding_of(client, owner, i)["suspended"] is False for i in ids)
    assert {r["binding_id"] for r in records(client, owner) if r["event"] == "lifted"} == set(ids)


def test_r11_suspending_a_beneficiary_marks_the_bindings_that_pay_for_them(client, sandbox, demo, owner):
    from_owner = created(bind(client, owner, CHILD, "child"))
    spouse = sign_in(client, sandbox, SPOUSE)
    from_spouse = created(bind(client, spouse, CHILD, "child"))
    other = created(bind(client, owner, PARENT, "parent"))
    suspension = created(suspend(client, demo, beneficiary_id_number=CHILD, reason="冒用医保凭证"))
    assert sorted(suspension["affected_binding_ids"]) == sorted([from_owner["id"], from_spouse["id"]])
    assert binding_of(client, owner, from_owner["id"])["suspended"] is True
    assert binding_of(client, spouse, from_spouse["id"])["suspended"] is True
    assert binding_of(client, owner, other["id"])["suspended"] is False
    child = sign_in(client, sandbox, CHILD)
    assert {r["event"] for r in records(client, child)} >= {"suspended"}


@pytest.mark.parametrize("body", [
    {"reason": "x"},
    {"owner_id_number": OWNER, "beneficiary_id_number": CHILD, "reason": "x"},
    {"owner_id_number": OWNER},
    {"owner_id_number": OWNER, "reason": "   "},
])
def test_r11_a_suspension_names_exactly_one_target_and_a_reason(client, demo, body):
    response = suspend(client, demo, **body)
    assert response.status_code == 400 and error_code(response) == "VALIDATION_ERROR"


def test_r11_an_unknown_person_cannot_be_suspended(client, demo):
    from datetime import date

    from app.security.id_number import make_id_number

    response = suspend(client, demo, owner_id_number=make_id_number("532621", date(1990, 1, 1), 999), reason="x")
    assert response.status_code == 404


@pytest.mark.parametrize("who", ["window1", "auditor1"])
def test_r11_only_admins_suspend_and_lift(client, demo, owner, who):
    binding = created(bind(client, owner, CHILD, "child"))
    assert suspend(client, demo, who, binding_id=binding["id"], reason="x").status_code == 403
    suspension = created(suspend(client, demo, binding_id=binding["id"], reason="x"))
    assert lift(client, demo, suspension["id"], who).status_code == 403
    assert client.post("/api/v1/staff/suspensions", json={"binding_id": binding["id"], "reason": "x"},
                       headers=bearer(owner)).status_code == 403


def test_every_staff_role_can_list_suspensions(client, demo, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    first = created(suspend(client, demo, binding_id=binding["id"], reason="x"))
    lift(client, demo, first["id"])
    second = created(suspend(client, demo, owner_id_number=OWNER, reason="y"))
    for who in ("window1", "admin1", "auditor1"):
        every = client.get("/api/v1/staff/suspensions", headers=bearer(demo.tokens[who])).get_json()["items"]
        assert [s["id"] for s in every] == [second["id"], first["id"]]
    in_force = client.get("/api/v1/staff/suspensions?active=true", headers=bearer(demo.tokens["auditor1"]))
    assert [s["id"] for s in in_force.get_json()["items"]] == [second["id"]]


def test_r17_an_id_number_typed_into_a_reason_is_stored_masked(client, demo, owner):
    binding = created(bind(client, owner, CHILD, "child"))
    suspension = created(suspend(client, demo, binding_id=binding["id"], reason=f"举报人 {SPOUSE} 称其转卖药品"))
    assert SPOUSE not in suspension["reason"] and SPOUSE[:3] + "*" * 11 + SPOUSE[-4:] in suspension["reason"]
    assert SPOUSE not in str(records(client, owner))
    with app_session() as session, session.begin():
        details = [e.details for e in session.scalars(select(AuditEvent))]
    assert SPOUSE not in str(details)


def _audit(prefix: str) -> list[tuple[str, int | None]]:
    with app_session() as session, session.begin():
        return [(e.action, e.target_id) for e in session.scalars(
            select(AuditEvent).where(AuditEvent.action.startswith(prefix)).order_by(AuditEvent.id))]
