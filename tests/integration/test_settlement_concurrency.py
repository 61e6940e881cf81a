"""Concurrent settlements (R7, R8, R12, R13): no overdraft, no cap overrun, one use per voucher, one
settlement per request number — with 24 threads, each its own HTTP client, released together.

Run on PostgreSQL (``TEST_DATABASE_URL``) this exercises the row locks; on the embedded SQLite
default the same tests pass because SQLite serialises writers.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from app.extensions import app_session
from app.services.vouchers import issue_voucher
from models import CapUsage, Settlement, User
from tests.money_helpers import (
    CHILD,
    OWNER,
    balance,
    drug,
    fresh,
    make_binding,
    person_id,
    set_balance,
    settle,
    sign_in,
    verify_ledger,
)

THREADS = 24


@pytest.fixture
def child_bound(app, demo, client, sandbox):
    """张伟 is bound to his child and signed in; returns a maker of fresh vouchers for the child."""
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    sign_in(client, sandbox, OWNER)
    owner, child = person_id(app, OWNER), person_id(app, CHILD)
    with app_session() as s, s.begin():
        user_id = s.scalar(select(User.id).where(User.person_id == owner))

    def vouchers(n: int) -> list[str]:
        codec = app.extensions["domain"].money.vouchers
        with app_session() as session:
            return [issue_voucher(session, app.extensions["domain"].pii, codec, user_id, owner, child,
                                  datetime.now(UTC))["code"] for _ in range(n)]

    return vouchers


def together(app, calls):
    """Run each call on its own thread with its own client, all released at the same moment."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        client = app.test_client()
        barrier.wait()
        response = call(client)
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def test_r7_many_settlements_against_one_small_balance_never_overdraw_it(app, child_bound):
    set_balance(app, OWNER, 5_000)
    codes = child_bound(THREADS)
    results = together(app, [lambda c, code=code: settle(c, code, [drug(1_000)]) for code in codes])

    assert [status for status, _ in results] == [201] * THREADS, results
    copaid = [body["copay_fen"] for _, body in results]
    assert sorted(copaid) == [0] * (THREADS - 5) + [1_000] * 5
    assert sum(body["cash_fen"] for _, body in results) == (THREADS - 5) * 1_000
    assert balance(app, OWNER) == 0
    assert verify_ledger(app).exit_code == 0


def test_r8_many_settlements_for_one_beneficiary_never_overrun_the_annual_cap(app, child_bound):
    set_balance(app, OWNER, 1_000_000)
    codes = child_bound(THREADS)
    results = together(app, [lambda c, code=code: settle(c, code, [drug(10_000)]) for code in codes])

    assert all(status == 201 for status, _ in results), results
    assert sum(body["copay_fen"] for _, body in results) == 200_000  # Wenshan's cap, exactly
    assert sum(body["cash_fen"] for _, body in results) == THREADS * 10_000 - 200_000
    with app_session() as s, s.begin():
        assert s.scalar(select(CapUsage.used_fen)) == 200_000
    assert balance(app, OWNER) == 1_000_000 - 200_000
    assert verify_ledger(app).exit_code == 0


def test_r13_concurrent_duplicates_of_one_request_make_one_settlement(app, child_bound):
    code = child_bound(1)[0]
    results = together(app, [lambda c: settle(c, code, [drug(4_321)], out_no="HIS-DUP-1")] * 12)

    assert {status for status, _ in results} == {201}
    assert len({body["settlement_no"] for _, body in results}) == 1
    with app_session() as s, s.begin():
        assert s.scalar(select(func.count()).select_from(Settlement)) == 1
    assert balance(app, OWNER) == 350_000 - 4_321
    assert verify_ledger(app).exit_code == 0


def test_r12_one_voucher_scanned_by_many_tills_at_once_is_accepted_once(app, child_bound):
    code = child_bound(1)[0]
    results = together(app, [lambda c, i=i: settle(c, code, [drug(1_000)], out_no=f"HIS-TILL-{i}")
                              for i in range(12)])

    statuses = sorted(status for status, _ in results)
    assert statuses == [201] + [422] * 11
    assert {body["error"]["code"] for status, body in results if status == 422} == {"VOUCHER_USED"}
    assert balance(app, OWNER) == 350_000 - 1_000
