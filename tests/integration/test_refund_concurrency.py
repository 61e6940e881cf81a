"""Concurrent refunds (R8, R13, R14): never more back than was paid, one refund per request number,
and the annual cap exact while refunds and new settlements of one beneficiary race — each thread its
own HTTP client, all released together.

Run on PostgreSQL (``TEST_DATABASE_URL``) this exercises the row locks (the settlement row serialises
the refunds of one settlement; the cap row serialises a beneficiary's refunds and settlements); on
the embedded SQLite default the same tests pass because SQLite serialises writers.
"""

from __future__ import annotations

from sqlalchemy import func, select

from app.extensions import app_session
from models import CapUsage, Refund, Settlement
from tests.integration.test_settlement_concurrency import THREADS, together
from tests.integration.test_settlement_concurrency import child_bound as child_bound  # noqa: F401 (a fixture)
from tests.money_helpers import OWNER, balance, drug, refund, set_balance, settle, verify_ledger


def _settled(app, code, amount_fen):
    response = settle(app.test_client(), code, [drug(amount_fen)])
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _cap_used(app):
    with app_session() as s, s.begin():
        return s.scalar(select(CapUsage.used_fen))


def test_r14_many_partial_refunds_at_once_never_give_back_more_than_was_paid(app, child_bound):
    body = _settled(app, child_bound(1)[0], 24_000)
    assert body["copay_fen"] == 24_000
    results = together(app, [lambda c: refund(c, body["settlement_no"], 1_500)] * THREADS)

    statuses = [status for status, _ in results]
    assert statuses.count(201) == 16 and statuses.count(422) == THREADS - 16, results
    assert {b["error"]["code"] for s, b in results if s == 422} == {"REFUND_EXCEEDS_PAID"}
    assert sorted(b["refunded_fen"] for s, b in results if s == 201) == list(range(1_500, 24_001, 1_500))
    assert balance(app, OWNER) == 350_000
    assert _cap_used(app) == 0
    assert verify_ledger(app).exit_code == 0


def test_r13_concurrent_duplicates_of_one_refund_make_one_refund(app, child_bound):
    body = _settled(app, child_bound(1)[0], 9_000)
    results = together(app, [lambda c: refund(c, body["settlement_no"], 4_000, out_no="RF-DUP-1")] * 12)

    assert {status for status, _ in results} == {201}, results
    assert len({b["refund_no"] for _, b in results}) == 1
    with app_session() as s, s.begin():
        assert s.scalar(select(func.count()).select_from(Refund)) == 1
    assert balance(app, OWNER) == 350_000 - 9_000 + 4_000
    assert verify_ledger(app).exit_code == 0


def test_r8_refunds_racing_new_settlements_keep_the_annual_cap_exact(app, child_bound):
    """A refund gives cap back while new bills of the same child draw on it: whatever the order, what
    the cap row says is what settlements paid less what refunds gave back, and never above the cap."""
    set_balance(app, OWNER, 1_000_000)
    full = _settled(app, child_bound(1)[0], 200_000)
    assert full["copay_fen"] == 200_000
    codes = child_bound(THREADS // 2)
    calls = [lambda c: refund(c, full["settlement_no"], 10_000)] * (THREADS // 2)
    calls += [lambda c, code=code: settle(c, code, [drug(10_000)]) for code in codes]
    results = together(app, calls)

    assert {status for status, _ in results} == {201}, results
    with app_session() as s, s.begin():
        copaid = s.scalar(select(func.sum(Settlement.copay_fen)))
        given_back = s.scalar(select(func.sum(Refund.cap_restored_fen)))
    assert given_back == 10_000 * (THREADS // 2)
    assert _cap_used(app) == copaid - given_back <= 200_000
    assert balance(app, OWNER) == 1_000_000 - copaid + given_back
    assert verify_ledger(app).exit_code == 0
