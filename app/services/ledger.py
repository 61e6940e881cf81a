"""The double-entry ledger: every movement of money is one journal whose entries sum to zero."""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import BigInteger, bindparam, column, func, insert, literal_column, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from models import Account, Journal, LedgerEntry

# Built once: Core statements on the tables, not per-call ORM statements (the settlement hot path).
_INSERT_JOURNAL = insert(Journal.__table__).returning(Journal.__table__.c.id)
_INSERT_ENTRY = insert(LedgerEntry.__table__)


def _journal_with_entries() -> object:
    """PostgreSQL: the journal and its entries in ONE statement (a data-modifying CTE), one round
    trip instead of two on every settlement and refund."""
    journals, entries = Journal.__table__, LedgerEntry.__table__
    journal = (insert(journals)
               .values({name: bindparam(name, type_=journals.c[name].type)
                        for name in ("kind", "settlement_id", "refund_id", "memo", "created_at")})
               .returning(journals.c.id).cte("journal"))
    arrays = (bindparam("accounts", type_=ARRAY(BigInteger)), bindparam("amounts", type_=ARRAY(BigInteger)))
    pairs = func.unnest(*arrays).table_valued(column("account_id", BigInteger),
                                              column("amount_fen", BigInteger)).render_derived()
    return (insert(entries)
            .from_select(["journal_id", "account_id", "amount_fen"],
                         select(journal.c.id, pairs.c.account_id, pairs.c.amount_fen).select_from(journal.join(
                             pairs, literal_column("true"))))
            .returning(entries.c.journal_id))


_INSERT_JOURNAL_WITH_ENTRIES = _journal_with_entries()


class UnbalancedJournal(AssertionError):
    """A programming error: a journal's entries must sum to zero."""


def journal_rows(kind: str, entries: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``(account_id, amount_fen)`` entries a journal writes: the non-zero ones, which must sum to zero."""
    rows = [(account_id, amount) for account_id, amount in entries if amount != 0]
    if sum(amount for _, amount in rows) != 0:
        raise UnbalancedJournal(f"{kind} journal does not balance: {rows}")
    return rows


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
    rows = journal_rows(kind, entries)
    values = {"kind": kind, "settlement_id": settlement_id, "refund_id": refund_id, "memo": memo, "created_at": at}
    if rows and session.get_bind().dialect.name == "postgresql":
        return session.execute(_INSERT_JOURNAL_WITH_ENTRIES, {
            **values, "accounts": [a for a, _ in rows], "amounts": [amount for _, amount in rows]}).scalars().first()
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


CLEARING_SHARDS = 16
"""Clearing accounts per institution (``accounts.shard`` 0..15, migration 0009). Every settlement
credits one, and its row lock is held until the commit: with one row, all settlements at an
institution queued there. Sixteen rows let sixteen commit side by side; the institution is owed
their sum. (Changing it later: shards are created for every institution, the choice below spreads
over however many an institution has.)"""


def system_account_id(session: Session, kind: str) -> int:
    """The id of the one account of ``kind`` (the ``registry`` account; created once). An
    institution's clearing accounts are ``clearing_account_ids``."""
    query = select(Account.id).where(Account.kind == kind)
    found = session.scalar(query)
    if found is not None:
        return found
    account = Account(kind=kind, balance_fen=0)
    session.add(account)
    session.flush()
    return account.id


_CLEARING_IDS = (select(Account.id).where(Account.kind == "institution", Account.institution_id == bindparam("iid"))
                 .order_by(Account.shard))


def existing_clearing_account_ids(session: Session, institution_id: int) -> tuple[int, ...]:
    """An institution's clearing accounts as they are, by shard (none created)."""
    return tuple(session.scalars(_CLEARING_IDS, {"iid": institution_id}))


def clearing_account_ids(session: Session, institution_id: int) -> tuple[int, ...]:
    """An institution's clearing accounts, by shard; the missing ones are created (an institution
    made before its accounts — by the registry load, which creates them, or by a test)."""
    found = existing_clearing_account_ids(session, institution_id)
    if len(found) >= CLEARING_SHARDS:
        return found
    dialect = session.get_bind().dialect.name
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert_(Account.__table__)
        .values([{"kind": "institution", "institution_id": institution_id, "shard": shard, "balance_fen": 0}
                 for shard in range(CLEARING_SHARDS)])
        # A concurrent creator of the same shard wins; we read its row below.
        .on_conflict_do_nothing(index_elements=["institution_id", "shard"],
                                index_where=Account.__table__.c.institution_id.isnot(None)))
    return existing_clearing_account_ids(session, institution_id)


def clearing_account_for(clearing_ids: tuple[int, ...], settlement_no: str) -> int:
    """The clearing account a settlement credits: one of its institution's, picked by its settlement
    number (the service's own, unpredictable to the institution), so both write paths, and any
    replay, pick the same. A refund debits the account its settlement credited (``refunds``)."""
    return clearing_ids[zlib.crc32(settlement_no.encode()) % len(clearing_ids)]
