"""Refunds (R14): reverse payment order, partial and full, the cap restored, never more than paid, R13."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.extensions import app_session
from models import BindingUsage, CapUsage, Notice
from tests.helpers import bearer
from tests.money_helpers import (
    CHILD,
    OWNER,
    PHARMACY,
    SPOUSE,
    balance,
    drug,
    fresh,
    issue,
    item,
    make_binding,
    person_id,
    refund,
    set_balance,
    settle,
    sign_in,
    signed,
    verify_ledger,
)

# verify-ledger must be clean after every test that moves money (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("ledger_stays_clean")


@pytest.fixture
def settled(app, demo, client, sandbox):
    """A 20000 fen bill for the child: 3000 cash (cosmetic), 12000 from 张伟 (12000 left), 5000 from 李娜."""
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    make_binding(app, SPOUSE, CHILD, "child")
    set_balance(app, OWNER, 12_000)
    set_balance(app, SPOUSE, 10_000)
    token = sign_in(client, sandbox, OWNER)
    response = settle(client, issue(client, token, person_id(app, CHILD)),
                      [drug(17_000), item("cosmetic", 3_000)])
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert [(p["payer"]["name"], p["amount_fen"]) for p in body["payments"]] == [("*伟", 12_000), ("*娜", 5_000)]
    return body


def created(response):
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def cap_used(app):
    with app_session() as s, s.begin():
        return s.scalar(select(CapUsage.used_fen).where(CapUsage.beneficiary_person_id == person_id(app, CHILD)))


def test_r14_a_partial_refund_returns_cash_first_then_the_last_payer(app, client, settled):
    body = created(refund(client, settled["settlement_no"], 6_000))
    assert body["cash_fen"] == 3_000
    assert [(c["payer"]["name"], c["kind"], c["amount_fen"]) for c in body["credits"]] == [("*娜", "copay", 3_000)]
    assert body["cap_restored_fen"] == 3_000
    assert (body["settlement_status"], body["refunded_fen"], body["refundable_fen"]) == ("partially_refunded",
                                                                                         6_000, 14_000)
    assert balance(app, SPOUSE) == 10_000 - 5_000 + 3_000
    assert balance(app, OWNER) == 0
    assert cap_used(app) == 17_000 - 3_000


def test_r14_refunds_walk_back_to_the_first_payer_and_a_full_refund_restores_everything(app, client, settled):
    created(refund(client, settled["settlement_no"], 6_000))
    second = created(refund(client, settled["settlement_no"], 4_000))
    assert [(c["payer"]["name"], c["amount_fen"]) for c in second["credits"]] == [("*娜", 2_000), ("*伟", 2_000)]
    rest = created(refund(client, settled["settlement_no"], 10_000))
    assert rest["settlement_status"] == "refunded" and rest["refundable_fen"] == 0
    assert balance(app, OWNER) == 12_000 and balance(app, SPOUSE) == 10_000
    assert cap_used(app) == 0
    with app_session() as s, s.begin():
        assert set(s.scalars(select(BindingUsage.paid_fen))) == {0}
    assert verify_ledger(app).exit_code == 0


def test_r14_a_refund_of_more_than_is_left_is_refused_and_changes_nothing(app, client, settled):
    created(refund(client, settled["settlement_no"], 15_000))
    response = refund(client, settled["settlement_no"], 5_001)
    assert response.status_code == 422
    assert response.get_json()["error"] == {
        "code": "REFUND_EXCEEDS_PAID", "message": response.get_json()["error"]["message"],
        "details": {"requested_fen": 5_001, "refundable_fen": 5_000}}
    assert created(refund(client, settled["settlement_no"], 5_000))["settlement_status"] == "refunded"


def test_r13_a_refund_replay_returns_the_original_and_another_body_is_a_conflict(app, client, settled):
    first = refund(client, settled["settlement_no"], 1_000, out_no="RF-1")
    again = refund(client, settled["settlement_no"], 1_000, out_no="RF-1")
    assert first.status_code == again.status_code == 201 and first.get_json() == again.get_json()
    conflict = refund(client, settled["settlement_no"], 2_000, out_no="RF-1")
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert balance(app, SPOUSE) == 5_000  # only the cash part moved, once


def test_r14_only_the_institution_that_settled_may_refund(app, client, settled):
    response = refund(client, settled["settlement_no"], 1_000, inst=PHARMACY)
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "NOT_FOUND"
    assert refund(client, "S2025010100000000000", 1_000).status_code == 404


@pytest.mark.parametrize("amount", [0, -5, 1.5, "100"])
def test_r14_a_refund_amount_must_be_a_positive_whole_number_of_fen(app, client, settled, amount):
    path = f"/api/v1/institution/settlements/{settled['settlement_no']}/refunds"
    response = signed(client, "H5326001", None, "POST", path, {"out_refund_no": "RF-X", "amount_fen": amount})
    assert response.status_code == 400


def test_r15_each_owner_credited_gets_one_refund_notice(app, client, settled):
    created(refund(client, settled["settlement_no"], 20_000))
    with app_session() as s, s.begin():
        notices = s.execute(select(Notice.person_id, Notice.amount_fen).where(Notice.kind == "refund")).all()
    assert sorted(notices) == sorted([(person_id(app, OWNER), 12_000), (person_id(app, SPOUSE), 5_000)])


def test_r14_the_settlement_look_up_lists_its_refunds(app, client, settled):
    body = created(refund(client, settled["settlement_no"], 2_500, out_no="RF-LOOK"))
    path = f"/api/v1/institution/settlements/{settled['settlement_no']}"
    now = signed(client, "H5326001", None, "GET", path).get_json()
    assert now["status"] == "partially_refunded" and now["refunded_fen"] == 2_500
    assert now["refunds"] == [{"refund_no": body["refund_no"], "out_refund_no": "RF-LOOK", "amount_fen": 2_500,
                               "created_at": body["created_at"]}]


def test_r16_the_owner_sees_the_refund_in_their_records(app, client, sandbox, settled):
    created(refund(client, settled["settlement_no"], 20_000))
    token = sign_in(client, sandbox, OWNER)
    items = client.get("/api/v1/records/deductions?role=owner", headers=bearer(token)).get_json()["items"]
    assert [(i["kind"], i["amount_fen"], i["balance_after_fen"]) for i in items] == [
        ("refund", 12_000, 12_000), ("copay", 12_000, 0)]
