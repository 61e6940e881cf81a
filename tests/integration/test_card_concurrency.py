"""Concurrent card settlements (R12, R7, R13): no overdraft, one settlement per request number, and
failed look-ups stay limited under a burst. On PostgreSQL + Redis (``TEST_DATABASE_URL``,
``TEST_REDIS_URL``) this exercises the row locks and the shared limit storage; on the embedded
SQLite default SQLite serialises the writers."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from app.extensions import app_session
from app.services import card_guard, settlements
from models import Settlement
from tests.integration.test_settlement_concurrency import THREADS, together
from tests.money_helpers import CHILD, OWNER, balance, drug, fresh, make_binding, set_balance, verify_ledger

URL = "/api/v1/institution/settlements"
CHILD_CARD = "M53262100000003"


def by_card(client, out_no, amount_fen, card=CHILD_CARD, id_number=CHILD):
    from tests.money_helpers import HOSPITAL, signed

    body = {"out_settlement_no": out_no, "card": {"social_card_no": card, "id_number": id_number},
            "items": [drug(amount_fen)]}
    return signed(client, HOSPITAL, None, "POST", URL, body)


@pytest.fixture
def child_bound(app, demo):
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")


def test_many_card_settlements_against_one_small_balance_never_overdraw_it(app, child_bound):
    set_balance(app, OWNER, 5_000)
    results = together(app, [lambda c, i=i: by_card(c, f"CARD-{i}", 1_000) for i in range(THREADS)])

    assert [status for status, _ in results] == [201] * THREADS, results
    assert sorted(body["copay_fen"] for _, body in results) == [0] * (THREADS - 5) + [1_000] * 5
    assert balance(app, OWNER) == 0
    assert verify_ledger(app).exit_code == 0


def test_concurrent_duplicates_of_one_card_request_make_one_settlement(app, child_bound):
    results = together(app, [lambda c: by_card(c, "CARD-DUP-1", 4_321)] * 12)

    assert {status for status, _ in results} == {201}
    assert len({body["settlement_no"] for _, body in results}) == 1
    with app_session() as s, s.begin():
        assert s.scalar(select(func.count()).select_from(Settlement)) == 1
    assert balance(app, OWNER) == 350_000 - 4_321
    assert verify_ledger(app).exit_code == 0


def test_a_burst_of_wrong_cards_gets_no_more_answers_than_the_limit(make_app, sandbox, demo, monkeypatch):
    app = make_app(CARD_LOOKUP_FAILURES="3/600")
    fresh(app)
    burst = 12
    # The worst case, forced: each look-up let through waits until the whole burst has been let
    # through (or a second has passed), so no failure is counted before every request is admitted.
    all_admitted = threading.Barrier(burst, timeout=1.0)
    validate = settlements.validate_id_number

    def held(*args, **kwargs):
        try:
            all_admitted.wait()
        except threading.BrokenBarrierError:
            pass
        return validate(*args, **kwargs)

    monkeypatch.setattr(settlements, "validate_id_number", held)
    results = together(app, [lambda c, i=i: by_card(c, f"BAD-{i}", 100, card=f"M0000000000{i:04d}")
                             for i in range(burst)])
    codes = [body["error"]["code"] for _, body in results]
    assert sorted(codes) == ["CARD_INVALID"] * 3 + ["RATE_LIMITED"] * (burst - 3), codes
    assert all(body["error"]["details"]["group"] == "card" and body["error"]["details"]["retry_after"] >= 1
               for _, body in results if body["error"]["code"] == "RATE_LIMITED")
    monkeypatch.undo()
    client = app.test_client()
    after = by_card(client, "GOOD-1", 100, card="M53262100000001", id_number=OWNER)
    assert after.status_code == 429 and after.get_json()["error"]["details"]["retry_after"] > 500


def test_right_cards_in_flight_together_are_never_refused_for_it(make_app, sandbox, demo, monkeypatch):
    """Successful look-ups never count: more of them at once than the limit all settle (a look-up
    that finds no free slot only because others are in flight waits for them, a few milliseconds)."""
    # More room than production's second: on a loaded 2-core machine, and on SQLite where a slot is
    # held while its look-up waits for the write lock, 24 look-ups through 3 slots can take longer.
    monkeypatch.setattr(card_guard, "BUSY_WAIT_SECONDS", 10.0)
    app = make_app(CARD_LOOKUP_FAILURES="3/600")
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    results = together(app, [lambda c, i=i: by_card(c, f"RIGHT-{i}", 100) for i in range(THREADS)])
    assert [status for status, _ in results] == [201] * THREADS, results
