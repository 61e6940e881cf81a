"""Issue 8, hole 4: a registry reload never gives spent money back (R7, ledger; SPEC §7 ``as_of``).

A load posts the balance differences as one balanced ``registry_sync`` journal carrying the file's
SHA-256 and ``as_of``; an account that moved after ``as_of`` is left and reported, and the load
writes nothing (exit 1) unless ``--skip-stale``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.demo import demo_registry
from app.extensions import app_session
from app.timefmt import iso
from models import Account, Journal, LedgerEntry, Person
from tests.money_helpers import (
    CHILD,
    OWNER,
    SPOUSE,
    balance,
    drug,
    fresh,
    issue,
    make_binding,
    person_id,
    settle,
    sign_in,
    verify_ledger,
)

# verify-ledger must be clean after every test that moves money (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("ledger_stays_clean")


@pytest.fixture
def spent(app, demo, client, sandbox):
    """The demo loaded (张伟: 350000 fen), then 张伟 paid 50000 fen for the child."""
    fresh(app)
    snapshot_time = datetime.now(UTC)  # after the demo load, before the payment
    make_binding(app, OWNER, CHILD, "child")
    token = sign_in(client, sandbox, OWNER)
    response = settle(client, issue(client, token, person_id(app, CHILD)), [drug(50_000)])
    assert response.status_code == 201, response.get_json()
    assert balance(app, OWNER) == 300_000
    return snapshot_time


def load(app, tmp_path, data, *args):
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    result = app.test_cli_runner().invoke(args=["load-registry", str(path), *args])
    return result, hashlib.sha256(path.read_bytes()).hexdigest()


def sync_journals():
    with app_session() as session, session.begin():
        return session.execute(select(Journal.id, Journal.source_sha256, Journal.as_of)
                               .where(Journal.kind == "registry_sync").order_by(Journal.id)).all()


def test_reloading_a_snapshot_taken_before_a_settlement_does_not_give_the_money_back(app, tmp_path, spent):
    before = sync_journals()
    result, _ = load(app, tmp_path, demo_registry(spent))
    assert result.exit_code == 1, result.output
    assert "moved after as_of" in result.output and "nothing was loaded" in result.output
    assert balance(app, OWNER) == 300_000  # the payment stands
    assert sync_journals() == before
    assert verify_ledger(app).exit_code == 0


def test_skip_stale_loads_the_rest_and_leaves_the_accounts_that_moved(app, tmp_path, spent):
    data = demo_registry(spent)
    for row in data["accounts"]:
        if row["id_number"] == SPOUSE:
            row["balance_fen"] = 125_000  # the core system credited 李娜 5000 fen
    result, sha = load(app, tmp_path, data, "--skip-stale")
    assert result.exit_code == 0, result.output
    assert "stale (left): accounts[1]" in result.output and "1 stale left" in result.output
    assert (balance(app, OWNER), balance(app, SPOUSE)) == (300_000, 125_000)
    journal_id, journal_sha, as_of = sync_journals()[-1]
    assert journal_sha == sha and as_of == spent.replace(microsecond=spent.microsecond // 1000 * 1000)
    with app_session() as session, session.begin():
        entries = session.execute(select(LedgerEntry.account_id, LedgerEntry.amount_fen)
                                  .where(LedgerEntry.journal_id == journal_id)).all()
        registry_account = session.scalar(select(Account.id).where(Account.kind == "registry"))
    assert sum(amount for _, amount in entries) == 0
    assert sorted(amount for _, amount in entries) == [-5_000, 5_000]
    assert (registry_account, -5_000) in entries
    assert verify_ledger(app).exit_code == 0


def test_a_snapshot_taken_after_the_settlement_syncs_the_difference(app, tmp_path, spent):
    data = demo_registry(datetime.now(UTC))
    # The core system knows the payment and has since added 10000 fen of contributions.
    next(row for row in data["accounts"] if row["id_number"] == OWNER)["balance_fen"] = 310_000
    result, sha = load(app, tmp_path, data)
    assert result.exit_code == 0, result.output
    assert balance(app, OWNER) == 310_000
    assert sync_journals()[-1][1] == sha
    # The same file again changes nothing and posts nothing.
    count = len(sync_journals())
    assert load(app, tmp_path, data)[0].exit_code == 0
    assert len(sync_journals()) == count and balance(app, OWNER) == 310_000


def test_an_older_snapshot_cannot_undo_a_newer_one(app, tmp_path, spent):
    newer = demo_registry(datetime.now(UTC))
    next(row for row in newer["accounts"] if row["id_number"] == SPOUSE)["balance_fen"] = 90_000
    assert load(app, tmp_path, newer)[0].exit_code == 0
    older = demo_registry(datetime.now(UTC) - timedelta(minutes=1))  # SPOUSE: 120000 in the older file
    result, _ = load(app, tmp_path, older)
    assert result.exit_code == 1 and "accounts[2]" in result.output, result.output
    assert balance(app, SPOUSE) == 90_000


@pytest.mark.parametrize(("as_of", "problem"), [
    (None, "as_of: required when the file has persons or accounts"),
    ("2025-03-01T09:30:00", "as_of: required when the file has persons or accounts"),
    ("yesterday", "as_of: required when the file has persons or accounts"),
    (iso(datetime.now(UTC) + timedelta(hours=1)), "is in the future"),
])
def test_a_file_with_accounts_needs_a_past_as_of_with_an_offset(app, tmp_path, as_of, problem):
    data = demo_registry()
    if as_of is None:
        del data["as_of"]
    else:
        data["as_of"] = as_of
    result, _ = load(app, tmp_path, data)
    assert result.exit_code != 0 and problem in result.output, result.output
    with app_session() as session, session.begin():
        assert session.scalar(select(func.count()).select_from(Account).where(Account.kind == "personal")) == 0


def test_a_file_of_households_and_institutions_only_needs_no_as_of(app, tmp_path):
    data = demo_registry()
    assert load(app, tmp_path, {"persons": data["persons"], "as_of": data["as_of"]})[0].exit_code == 0
    result, _ = load(app, tmp_path, {"households": data["households"], "institutions": data["institutions"]})
    assert result.exit_code == 0, result.output


def test_an_older_snapshot_cannot_bring_an_owner_back_to_active(app, tmp_path, spent):
    """R1: the registry said 张伟 left insurance; reloading an earlier snapshot must not revive him."""
    newer = demo_registry(datetime.now(UTC))
    next(row for row in newer["persons"] if row["id_number"] == OWNER)["status"] = "inactive"
    newer["accounts"] = [row for row in newer["accounts"] if row["id_number"] != OWNER]
    assert load(app, tmp_path, newer)[0].exit_code == 0
    older = demo_registry(spent)
    older["accounts"] = []
    result, _ = load(app, tmp_path, older)
    assert result.exit_code == 1 and "persons[1]: a newer snapshot already loaded this person" in result.output
    result, _ = load(app, tmp_path, older, "--skip-stale")
    assert result.exit_code == 0 and "stale (left): persons[1]" in result.output, result.output
    with app_session() as session, session.begin():
        assert session.scalar(select(Person.status).where(Person.id == person_id(app, OWNER))) == "inactive"
