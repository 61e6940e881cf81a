"""``flask verify-ledger`` recomputes every running total from the ledger and names each difference."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, select, update

from app.extensions import app_session
from models import Account, BindingUsage, CapUsage, Journal, LedgerEntry, Payment, Settlement
from tests.money_helpers import (
    CHILD,
    OWNER,
    drug,
    fresh,
    issue,
    make_binding,
    person_id,
    refund,
    settle,
    sign_in,
    verify_ledger,
)


@pytest.fixture
def money_moved(app, demo, client, sandbox):
    """One settlement for the child paid by 张伟, partly refunded."""
    fresh(app)
    make_binding(app, OWNER, CHILD, "child")
    token = sign_in(client, sandbox, OWNER)
    response = settle(client, issue(client, token, person_id(app, CHILD)), [drug(9_000)])
    assert response.status_code == 201, response.get_json()
    assert refund(client, response.get_json()["settlement_no"], 2_000).status_code == 201
    return response.get_json()


def test_the_ledger_of_a_settlement_and_a_refund_is_clean(app, money_moved):
    result = verify_ledger(app)
    assert result.exit_code == 0, result.output
    assert "clean" in result.output and "1 settlements" in result.output


def test_a_balance_changed_behind_the_ledger_fails_the_check(app, money_moved):
    owner_account = _owner_account(app)
    with app_session() as s, s.begin():
        s.execute(update(Account).where(Account.id == owner_account).values(balance_fen=Account.balance_fen + 1))
    result = verify_ledger(app)
    assert result.exit_code == 1
    expected = 350_000 - 9_000 + 2_000
    assert f"account {owner_account} (personal): balance_fen {expected + 1} != sum of ledger entries {expected}" \
        in result.output


def test_an_unbalanced_journal_fails_the_check(app, money_moved):
    owner_account = _owner_account(app)
    with app_session() as s, s.begin():
        journal = s.scalar(select(Journal.id).where(Journal.kind == "settlement"))
        s.execute(insert(LedgerEntry).values(journal_id=journal, account_id=owner_account, amount_fen=-5))
    result = verify_ledger(app)
    assert result.exit_code == 1
    assert f"journal {journal}: entries sum to -5, not 0" in result.output


def test_cap_and_binding_usage_that_disagree_with_the_payments_fail_the_check(app, money_moved):
    with app_session() as s, s.begin():
        s.execute(update(CapUsage).values(used_fen=CapUsage.used_fen + 100))
        s.execute(update(BindingUsage).values(paid_fen=0))
    result = verify_ledger(app)
    assert result.exit_code == 1
    assert f"cap_usage person {person_id(app, CHILD)}" in result.output and "used_fen 7100 != " in result.output
    assert "binding_usage binding" in result.output and "paid_fen 0 != co-pay paid less refunded 7000" in result.output


def test_a_payment_whose_refunds_do_not_add_up_fails_the_check(app, money_moved):
    with app_session() as s, s.begin():
        s.execute(update(Payment).values(refunded_fen=0))
    result = verify_ledger(app)
    assert result.exit_code == 1
    assert "refunded_fen 0 != refund parts 2000" in result.output


def _owner_account(app):
    with app_session() as s, s.begin():
        return s.scalar(select(Account.id).where(Account.person_id == person_id(app, OWNER)))


def _move_entry(app, kind, from_account, to_account, amount=None):
    """Re-point (part of) a personal entry of the ``kind`` journal to another account, keeping every
    balance equal to its ledger sum and every journal balanced: only the per-account record is wrong."""
    with app_session() as s, s.begin():
        entry = s.scalar(select(LedgerEntry).join(Journal, Journal.id == LedgerEntry.journal_id)
                         .where(Journal.kind == kind, LedgerEntry.account_id == from_account))
        moved = entry.amount_fen if amount is None else amount
        entry.amount_fen -= moved
        s.add(LedgerEntry(journal_id=entry.journal_id, account_id=to_account, amount_fen=moved))
        s.execute(update(Account).where(Account.id == from_account).values(balance_fen=Account.balance_fen - moved))
        s.execute(update(Account).where(Account.id == to_account).values(balance_fen=Account.balance_fen + moved))
        return entry.journal_id


def _other_personal_account(app):
    with app_session() as s, s.begin():
        return s.scalar(select(Account.id).where(Account.kind == "personal", Account.id != _owner_account(app))
                        .order_by(Account.id))


def test_a_settlement_journal_that_debited_another_account_than_its_payments_fails_the_check(app, money_moved):
    owner_account, child_account = _owner_account(app), _other_personal_account(app)
    journal = _move_entry(app, "settlement", owner_account, child_account)
    result = verify_ledger(app)
    assert result.exit_code == 1, result.output
    assert f"settlement {money_moved['settlement_no']}: its journal moved 0 on account {owner_account}" \
        in result.output
    assert f"account {child_account}" in result.output and f"journal {journal}" not in result.output


def test_a_refund_journal_that_credited_more_than_its_parts_fails_the_check(app, money_moved):
    owner_account = _owner_account(app)
    with app_session() as s, s.begin():
        clearing = s.scalar(select(LedgerEntry.account_id).join(Journal, Journal.id == LedgerEntry.journal_id)
                            .where(Journal.kind == "refund", LedgerEntry.amount_fen < 0))
    # The owner got 2,500 back for a refund whose parts give back 2,000; the clearing account paid it.
    _move_entry(app, "refund", clearing, owner_account, amount=500)
    result = verify_ledger(app)
    assert result.exit_code == 1, result.output
    assert f"its journal moved 2500 on account {owner_account}, its refund parts 2000" in result.output


@pytest.mark.parametrize("kind", ["settlement", "refund"])
def test_a_journal_whose_institution_side_is_another_institutions_account_fails_the_check(app, money_moved, kind):
    """The money of a settlement (or a refund) must go to (come from) a clearing account of the
    institution that settled, not another institution's nor the registry's — every balance still
    equal to its entries and every personal movement right, so only this check sees it."""
    with app_session() as s, s.begin():
        settled_at = s.scalar(select(Settlement.institution_id).where(
            Settlement.settlement_no == money_moved["settlement_no"]))
        clearing = s.scalar(select(LedgerEntry.account_id).join(Journal, Journal.id == LedgerEntry.journal_id)
                            .join(Account, Account.id == LedgerEntry.account_id)
                            .where(Journal.kind == kind, Account.kind == "institution"))
        elsewhere = s.scalar(select(Account.id).where(Account.kind == "institution",
                                                      Account.institution_id != settled_at).order_by(Account.id))
    journal = _move_entry(app, kind, clearing, elsewhere)
    result = verify_ledger(app)
    assert result.exit_code == 1, result.output
    assert f"{kind} journal {journal} of settlement {money_moved['settlement_no']}: account {elsewhere}" \
        in result.output


def test_a_settlement_journal_that_names_no_settlement_but_moves_clearing_money_fails_the_check(app, money_moved):
    with app_session() as s, s.begin():
        clearing = s.scalar(select(Account.id).where(Account.kind == "institution").order_by(Account.id))
        registry = s.scalar(select(Account.id).where(Account.kind == "registry"))
        journal = s.execute(insert(Journal).values(kind="settlement", memo="forged").returning(Journal.id)).scalar_one()
        s.execute(insert(LedgerEntry), [{"journal_id": journal, "account_id": clearing, "amount_fen": 700},
                                        {"journal_id": journal, "account_id": registry, "amount_fen": -700}])
        s.execute(update(Account).where(Account.id == clearing).values(balance_fen=Account.balance_fen + 700))
        s.execute(update(Account).where(Account.id == registry).values(balance_fen=Account.balance_fen - 700))
    result = verify_ledger(app)
    assert result.exit_code == 1, result.output
    assert f"settlement journal {journal} of settlement (none): account {clearing} (institution)" in result.output
