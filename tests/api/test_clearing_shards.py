"""An institution's clearing accounts (ledger.CLEARING_SHARDS, migration 0009): every settlement
credits the one its settlement number picks, on both write paths; a refund debits the one its
settlement credited; what the institution is owed is their sum, and verify-ledger stays clean."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, select, update

from app.demo import DEMO_INSTITUTION_SECRET
from app.extensions import app_session
from app.services.ledger import CLEARING_SHARDS, clearing_account_for, clearing_account_ids
from app.services.registry import load_registry
from models import Account, Institution, Journal, LedgerEntry
from tests.money_helpers import (
    HOSPITAL,
    OWNER,
    drug,
    fresh,
    issue,
    person_id,
    refund,
    set_balance,
    settle,
    sign_in,
)

pytestmark = pytest.mark.usefixtures("ledger_stays_clean")


def clearing(app) -> dict[int, int]:
    """The hospital's clearing accounts: id → balance, by shard."""
    with app_session() as s, s.begin():
        institution_id = s.scalar(select(Institution.id).where(Institution.code == HOSPITAL))
        rows = s.execute(select(Account.id, Account.balance_fen).where(
            Account.kind == "institution", Account.institution_id == institution_id).order_by(Account.shard)).all()
    return {row.id: row.balance_fen for row in rows}


def test_an_institution_has_its_clearing_accounts_from_the_registry_load(app, demo):
    with app_session() as s, s.begin():
        for institution_id in s.scalars(select(Institution.id)):
            shards = s.scalars(select(Account.shard).where(Account.institution_id == institution_id)
                               .order_by(Account.shard)).all()
            assert shards == list(range(CLEARING_SHARDS))
            # Asking again creates nothing more.
            assert len(clearing_account_ids(s, institution_id)) == CLEARING_SHARDS


def test_settlements_spread_over_the_clearing_accounts_and_refunds_take_back_from_the_one_credited(
        app, demo, client, sandbox):
    fresh(app)
    set_balance(app, OWNER, 1_000_000)
    token = sign_in(client, sandbox, OWNER)
    before = clearing(app)
    ids = tuple(before)
    settled = []
    for _ in range(12):
        response = settle(client, issue(client, token, person_id(app, OWNER)), [drug(1_000)])
        assert response.status_code == 201, response.get_json()
        settled.append(response.get_json()["settlement_no"])
    after = clearing(app)
    credited = {account: after[account] - before[account] for account in ids if after[account] != before[account]}
    expected: dict[int, int] = {}
    for number in settled:
        account = clearing_account_for(ids, number)
        expected[account] = expected.get(account, 0) + 1_000
    assert credited == expected
    assert len(credited) > 1  # 12 settlements on one shard: 16^-11, the spread is not working
    assert sum(after.values()) - sum(before.values()) == 12_000

    # A refund debits the shard its settlement credited.
    target = settled[0]
    account = clearing_account_for(ids, target)
    response = refund(client, target, 400)
    assert response.status_code == 201, response.get_json()
    again = clearing(app)
    assert {a: after[a] - again[a] for a in ids if again[a] != after[a]} == {account: 400}

    # A settlement made before migration 0009 credited shard 0, whatever its number picks now: its
    # refund takes the money back from shard 0 (its journal says so), not from the picked shard.
    old = next(n for n in settled[1:] if clearing_account_for(ids, n) != ids[0])
    picked = clearing_account_for(ids, old)
    with app_session() as s, s.begin():
        journal = s.scalar(select(Journal.id).where(Journal.kind == "settlement",
                                                    Journal.memo == old))
        s.execute(update(LedgerEntry).where(LedgerEntry.journal_id == journal, LedgerEntry.account_id == picked)
                  .values(account_id=ids[0]))
        s.execute(update(Account).where(Account.id == picked).values(balance_fen=Account.balance_fen - 1_000))
        s.execute(update(Account).where(Account.id == ids[0]).values(balance_fen=Account.balance_fen + 1_000))
    moved = clearing(app)
    response = refund(client, old, 1_000)
    assert response.status_code == 201, response.get_json()
    final = clearing(app)
    assert {a: moved[a] - final[a] for a in ids if final[a] != moved[a]} == {ids[0]: 1_000}


def test_an_institution_with_only_its_first_clearing_account_settles_there_and_the_registry_load_adds_the_rest(
        app, demo, client, sandbox):
    """As the release before migration 0009 leaves an institution it creates: shard 0 alone. Its
    settlements credit shard 0 (right, only not spread) — no accounts are created inside a
    settlement while it holds the payers' rows — and the next registry load creates the others."""
    fresh(app)
    set_balance(app, OWNER, 100_000)
    with app_session() as s, s.begin():
        institution_id = s.scalar(select(Institution.id).where(Institution.code == HOSPITAL))
        s.execute(delete(Account).where(Account.institution_id == institution_id, Account.shard > 0))
    app.extensions["domain"].institutions._cache.clear()  # the authenticator's 30 s cache of them
    (only,) = clearing(app)
    token = sign_in(client, sandbox, OWNER)
    response = settle(client, issue(client, token, person_id(app, OWNER)), [drug(1_000)])
    assert response.status_code == 201, response.get_json()
    assert clearing(app) == {only: 1_000}

    row = {"code": HOSPITAL, "name": "文山州人民医院", "kind": "hospital", "region_code": "532601",
           "designated": True, "api_secret": DEMO_INSTITUTION_SECRET}
    with app_session() as session:
        load_registry(session, app.extensions["domain"].pii,
                      {"persons": [], "accounts": [], "households": [], "institutions": [row]}, datetime.now(UTC))
    after = clearing(app)
    assert len(after) == CLEARING_SHARDS and after[only] == 1_000
