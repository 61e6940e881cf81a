"""The double-entry ledger: every movement of money is one journal whose entries sum to zero."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from models import Account, Journal, LedgerEntry

# Built once: Core statements on the tables, not per-call ORM statements (the settlement hot path).
_INSERT_JOURNAL = insert(Journal.__table__).returning(Journal.__table__.c.id)
_INSERT_ENTRY = insert(LedgerEntry.__table__)


class UnbalancedJournal(AssertionError):
    """A programming error: a journal's entries must sum to zero."""


def post_journal(
    session: Session,
    kind: str,
    entries: Iterable[tuple[int, int]],
    at: datetime,
    *,
    settlement_id: int | None = None,
    refund_id: int | None = None,
    memo: str | None = None,
) -> int:
    """Write one balanced journal of ``(account_id, amount_fen)`` entries; return its id.

    Entries credit (+) or debit (−) accounts; the caller has already updated the balances
    under its row locks, so balance = sum of entries stays true in the same transaction.
    """
    rows = [(account_id, amount) for account_id, amount in entries if amount != 0]
    if sum(amount for _, amount in rows) != 0:
        raise UnbalancedJournal(f"{kind} journal does not balance: {rows}")
    journal_id = session.execute(
        _INSERT_JOURNAL,
        {"kind": kind, "settlement_id": settlement_id, "refund_id": refund_id, "memo": memo, "created_at": at},
    ).scalar_one()
    if rows:
        session.execute(
            _INSERT_ENTRY,
            [{"journal_id": journal_id, "account_id": a, "amount_fen": amount} for a, amount in rows],
        )
    return journal_id


def system_account_id(session: Session, kind: str, institution_id: int | None = None) -> int:
    """The id of the ``registry`` account or of an institution's clearing account (created once)."""
    query = select(Account.id).where(Account.kind == kind)
    if institution_id is not None:
        query = query.where(Account.institution_id == institution_id)
    found = session.scalar(query)
    if found is not None:
        return found
    account = Account(kind=kind, institution_id=institution_id, balance_fen=0)
    session.add(account)
    session.flush()
    return account.id
