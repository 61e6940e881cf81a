"""Money holes found in the second attacker's review (refunds, cards, institution auth, 亲情码).
Each test reproduces the attack first."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import update

from app.extensions import app_session
from models import Binding
from tests.binding_helpers import bind
from tests.helpers import bearer
from tests.money_helpers import (
    CHILD,
    OWNER,
    SPOUSE,
    balance,
    drug,
    issue,
    make_binding,
    ok,
    settle,
    suspend_by_admin,
    suspending_family,
)

# verify-ledger must be clean after every test that moves money (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("ledger_stays_clean")


@pytest.fixture
def family(app, demo, client, sandbox):
    return suspending_family(app, demo, client, sandbox)


def error_code(response, status):
    assert response.status_code == status, response.get_json()
    return response.get_json()["error"]["code"]


def suspend(client, family, **body):
    return suspend_by_admin(client, family, "倒卖药品", **body)


# --------------------------------------------------------------------------- R11 + R12: a suspended owner's 亲情码


def test_r11_r12_an_owner_whose_copay_use_is_suspended_gets_no_family_code(app, client, family):
    """An owner suspended for reselling drugs kept issuing 亲情码 for the child (the binding row stays
    ``active`` under an owner-scope suspension): the child's other parent's account paid for them."""
    mine = ok(bind(client, family.owner_token, CHILD, "child"), 201)
    suspend(client, family, owner_id_number=OWNER)

    refused = client.post("/api/v1/vouchers", json={"person_id": family.child}, headers=bearer(family.owner_token))
    assert error_code(refused, 422) == "BINDING_NOT_ACTIVE"
    assert refused.get_json()["error"]["details"] == {"binding_id": mine["id"], "status": "suspended"}
    # The child's other parent still can, and pays alone.
    body = ok(settle(client, issue(client, family.spouse_token, family.child), [drug(10_000)]), 201)
    assert [(p["payer"]["person_id"], p["amount_fen"]) for p in body["payments"]] == [(family.spouse, 10_000)]


def test_r11_r12_a_family_code_issued_before_the_owners_suspension_settles_nothing(app, client, family):
    ok(bind(client, family.owner_token, CHILD, "child"), 201)
    code = issue(client, family.owner_token, family.child)
    suspend(client, family, owner_id_number=OWNER)

    assert error_code(settle(client, code, [drug(10_000)]), 422) == "BINDING_NOT_ACTIVE"
    assert (balance(app, OWNER), balance(app, SPOUSE)) == (350_000, 120_000)


def test_r11_r12_a_family_code_on_an_active_row_of_a_suspended_pair_settles_nothing(app, client, family):
    """Defence in depth, as the settlement's own check: a binding row of a suspended pair that says
    ``active`` (written before the pair rule, or by any other path) gives no 亲情码 either."""
    old = make_binding(app, OWNER, CHILD, "child")
    suspend(client, family, binding_id=old)
    with app_session() as session, session.begin():
        session.execute(update(Binding).where(Binding.id == old).values(status="unbound", ended_at=datetime.now(UTC)))
    new = make_binding(app, OWNER, CHILD, "child")  # active, as the old code made it

    refused = client.post("/api/v1/vouchers", json={"person_id": family.child}, headers=bearer(family.owner_token))
    assert error_code(refused, 422) == "BINDING_NOT_ACTIVE"
    assert refused.get_json()["error"]["details"] == {"binding_id": new, "status": "suspended"}
