"""Issue 8, hole 4 under concurrency: a registry load racing settlements never gives money back.

The load locks the accounts it syncs in id order (as settlements do) and checks for movements after
``as_of`` under that lock: a settlement either committed first (the account is stale and left) or
waits for the load (and pays from the synced balance). Runs on PostgreSQL; on SQLite writers are
serialised, so it only shows the same outcome.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.demo import demo_registry
from app.extensions import app_session
from app.services.registry import load_registry
from tests.integration.test_settlement_concurrency import child_bound, together  # noqa: F401 (fixture)
from tests.money_helpers import OWNER, balance, drug, settle, verify_ledger

SETTLEMENTS = 12


class _Load:
    """A call for ``together``: loads a snapshot with --skip-stale and answers like a response."""

    def __init__(self, app, data):
        self.app, self.data, self.report = app, data, None

    def __call__(self, client):
        with self.app.app_context(), app_session() as session:
            self.report = load_registry(session, self.app.extensions["domain"].pii, self.data, datetime.now(UTC),
                                        skip_stale=True)

        class Done:
            status_code = 200

            @staticmethod
            def get_json():
                return {}

        return Done()


@pytest.mark.parametrize("round_", range(3))
def test_a_load_racing_settlements_either_syncs_first_or_leaves_the_account(app, child_bound, round_):  # noqa: F811
    snapshot = demo_registry(datetime.now(UTC))  # taken before any of the settlements below
    next(row for row in snapshot["accounts"] if row["id_number"] == OWNER)["balance_fen"] = 400_000
    load = _Load(app, snapshot)
    codes = child_bound(SETTLEMENTS)
    results = together(app, [load] + [lambda c, code=code: settle(c, code, [drug(1_000)]) for code in codes])

    assert [status for status, _ in results[1:]] == [201] * SETTLEMENTS, results
    paid = sum(body["copay_fen"] for _, body in results[1:])
    assert paid == SETTLEMENTS * 1_000
    stale = [s.account_id for s in load.report.stale]
    # Synced before every settlement (400000 − paid) or left because one came first (350000 − paid);
    # never the snapshot's balance with payments undone.
    assert balance(app, OWNER) == (350_000 if stale else 400_000) - paid
    assert verify_ledger(app).exit_code == 0
