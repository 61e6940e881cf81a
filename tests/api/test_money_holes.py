"""Issue 8, holes 1 and 3: suspensions hold for the pair or person (R11); an owner who is no longer an
active eligible owner pays nothing (R1, R11). Each test reproduces the attack first."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from app.extensions import app_session
from app.services.registry import load_registry
from models import Binding
from tests.binding_helpers import PEOPLE, bind, records
from tests.helpers import bearer
from tests.money_helpers import (
    CHILD,
    OWNER,
    PARENT,
    balance,
    drug,
    issue,
    make_binding,
    ok,
    settle,
    sign_in,
    suspend_by_admin,
    suspending_family,
)

# verify-ledger must be clean after every test that moves money (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("ledger_stays_clean")


@pytest.fixture
def family(app, demo, client, sandbox):
    return suspending_family(app, demo, client, sandbox)


def suspend(client, family, **body):
    return suspend_by_admin(client, family, "套现", **body)


def lift(client, family, suspension_id):
    return ok(client.post(f"/api/v1/staff/suspensions/{suspension_id}/lift", json={"reason": "复核无误"},
                          headers=bearer(family.tokens["admin1"])))


def unbind(client, token, binding_id):
    return ok(client.post(f"/api/v1/bindings/{binding_id}/unbind", json={}, headers=bearer(token)))


def payers(body):
    return [(p["payer"]["person_id"], p["amount_fen"]) for p in body["payments"]]


# --------------------------------------------------------------------------- hole 1: R11 pair suspensions


def test_r11_unbinding_and_binding_again_does_not_undo_a_binding_suspension(app, client, family):
    first = ok(bind(client, family.owner_token, CHILD, "child"), 201)
    assert first["status"] == "active"
    suspension = suspend(client, family, binding_id=first["id"])
    unbind(client, family.owner_token, first["id"])

    again = ok(bind(client, family.owner_token, CHILD, "child"), 201)
    # The pair is suspended: the new binding is created suspended, and its record says why.
    assert again["status"] == "suspended" and again["suspended"] is True
    event = next(r for r in records(client, family.owner_token) if r["binding_id"] == again["id"]
                 and r["event"] == "suspended")
    assert event["reason"] == "套现"
    # The owner cannot issue a 亲情码 on it; the child's other parent still can, and pays alone.
    refused = client.post("/api/v1/vouchers", json={"person_id": family.child}, headers=bearer(family.owner_token))
    assert refused.status_code == 422 and refused.get_json()["error"]["code"] == "BINDING_NOT_ACTIVE"
    body = ok(settle(client, issue(client, family.spouse_token, family.child), [drug(10_000)]), 201)
    assert payers(body) == [(family.spouse, 10_000)]
    assert balance(app, OWNER) == 350_000

    # Lifting the pair's suspension makes the new binding usable.
    lifted = lift(client, family, suspension["id"])
    assert lifted["affected_binding_ids"] == [again["id"]]
    view = ok(client.get(f"/api/v1/bindings/{again['id']}", headers=bearer(family.owner_token)))
    assert view["status"] == "active" and view["suspended"] is False
    body = ok(settle(client, issue(client, family.owner_token, family.child), [drug(10_000)]), 201)
    assert payers(body) == [(family.owner, 10_000)]


def test_r11_the_settlement_checks_the_pair_even_when_a_binding_row_says_active(app, client, family):
    """Defence in depth: a binding row of a suspended pair that is `active` (written before this rule,
    or by any other path) still pays nothing — the settlement looks suspensions up by the pair."""
    old = make_binding(app, OWNER, CHILD, "child")
    suspend(client, family, binding_id=old)
    with app_session() as session, session.begin():
        session.execute(update(Binding).where(Binding.id == old).values(status="unbound", ended_at=datetime.now(UTC)))
    new = make_binding(app, OWNER, CHILD, "child")  # active, as the old code made it

    body = ok(settle(client, issue(client, family.spouse_token, family.child), [drug(10_000)]), 201)
    assert payers(body) == [(family.spouse, 10_000)]
    assert balance(app, OWNER) == 350_000
    short = ok(settle(client, issue(client, family.spouse_token, family.child), [drug(200_000)]), 201)
    assert {"code": "BINDING_SUSPENDED", "binding_id": new, "when": "at_service"} in short["reasons"]
    assert balance(app, OWNER) == 350_000


def test_r11_an_owner_suspension_holds_for_bindings_made_after_it(app, client, sandbox, family):
    suspension = suspend(client, family, owner_id_number=OWNER)
    made = ok(bind(client, family.owner_token, PARENT, "parent"), 201)
    assert made["suspended"] is True
    event = next(r for r in records(client, family.owner_token) if r["binding_id"] == made["id"]
                 and r["event"] == "suspended")
    assert event["reason"] == "套现"
    parent_token = sign_in(client, sandbox, PARENT)
    body = ok(settle(client, issue(client, parent_token), [drug(10_000)]), 201)
    assert body["copay_fen"] == 0 and [r["code"] for r in body["reasons"]] == ["BINDING_SUSPENDED"]
    assert balance(app, OWNER) == 350_000
    assert lift(client, family, suspension["id"])["affected_binding_ids"] == [made["id"]]
    body = ok(settle(client, issue(client, parent_token), [drug(10_000)]), 201)
    assert payers(body) == [(family.owner, 10_000)]


def test_r11_a_beneficiary_suspension_holds_for_bindings_made_after_it(app, client, family):
    suspend(client, family, beneficiary_id_number=CHILD)
    made = ok(bind(client, family.owner_token, CHILD, "child"), 201)
    assert made["status"] == "active" and made["suspended"] is True
    body = ok(settle(client, issue(client, family.owner_token, family.child), [drug(10_000)]), 201)
    assert body["copay_fen"] == 0 and [r["code"] for r in body["reasons"]] == ["BENEFICIARY_SUSPENDED"]
    assert balance(app, OWNER) == 350_000


# --------------------------------------------------------------------------- hole 3: R1 owners who left


def _registry_says(app, id_number, **changes):
    name, card = PEOPLE[id_number]
    row = {"id_number": id_number, "name": name, "social_card_no": card, "insurance_type": "employee",
           "region_code": "532621", "status": "active", **changes}
    with app_session() as session:
        load_registry(session, app.extensions["domain"].pii,
                      {"as_of": datetime.now(UTC).isoformat(), "persons": [row]}, datetime.now(UTC))


@pytest.mark.parametrize(("changes", "why"), [
    ({"status": "inactive"}, "inactive"),
    ({"insurance_type": "resident"}, "not_employee_insurance"),
    ({"region_code": "370302"}, "outside_province"),
])
def test_r1_an_owner_who_is_no_longer_eligible_pays_nothing_and_the_binding_says_so(app, client, family, changes,
                                                                                    why):
    binding = ok(bind(client, family.owner_token, CHILD, "child"), 201)
    assert binding["owner_eligible"] is True and binding["owner_ineligible_reason"] is None
    _registry_says(app, OWNER, **changes)  # left insurance, deceased, moved away…

    body = ok(settle(client, issue(client, family.spouse_token, family.child), [drug(200_000)]), 201)
    assert payers(body) == [(family.spouse, 120_000)]
    assert {"code": "OWNER_NOT_ELIGIBLE", "binding_id": binding["id"], "owner_person_id": family.owner,
            "why": why} in body["reasons"]
    assert balance(app, OWNER) == 350_000
    view = ok(client.get(f"/api/v1/bindings/{binding['id']}", headers=bearer(family.owner_token)))
    assert (view["owner_eligible"], view["owner_ineligible_reason"]) == (False, why)
    listed = ok(client.get("/api/v1/staff/bindings?status=active", headers=bearer(family.tokens["window1"])))
    assert {(b["id"], b["owner_eligible"]) for b in listed["items"]} >= {(binding["id"], False)}
