"""``flask verify-ledger``: recompute every running total from the records it summarises.

The running totals (account balances, cap usage, binding usage, refunded amounts) are updated in
the same transactions as the ledger, under row locks; this check proves they still agree:

- every account's ``balance_fen`` equals the sum of its ledger entries;
- every journal sums to zero;
- every settlement is conserved (total = own + co-pay + cash), its payments add up to its own and
  co-pay parts, its settlement journal moved exactly that, and its refunds add up to ``refunded_fen``;
- every payment's ``refunded_fen`` equals its refund parts, every refund equals its cash part plus
  its parts;
- account by account, a settlement's journal took from each personal account exactly what its
  payments from that account say, and a refund's journal gave back to each exactly its refund parts
  of that account's payments (a journal that moved the right total on the wrong account, or a refund
  that credited more than its parts, is caught even though every balance equals its ledger);
- a settlement's and a refund's journal move money only between personal accounts and clearing
  accounts of the institution that settled (not another institution's, not the registry's);
- every ``cap_usage`` row equals the co-pay payments less co-pay refunds of that beneficiary in
  that Asia/Shanghai service year, and every ``binding_usage`` row likewise for its binding.

It reads one consistent snapshot (REPEATABLE READ on PostgreSQL), so settlements may run meanwhile.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import and_, case, func, literal, or_, select, union_all
from sqlalchemy.orm import Session

from app.policy import year_of
from models import (
    Account,
    BindingUsage,
    CapUsage,
    Journal,
    LedgerEntry,
    Payment,
    Refund,
    RefundPart,
    Settlement,
)


@dataclass
class LedgerReport:
    differences: list[str] = field(default_factory=list)
    accounts: int = 0
    journals: int = 0
    settlements: int = 0
    cap_rows: int = 0
    binding_rows: int = 0

    @property
    def clean(self) -> bool:
        return not self.differences


def verify_ledger(session: Session) -> LedgerReport:
    """Check every invariant above; the report lists each difference found (empty: clean)."""
    report = LedgerReport()
    with session.begin():
        if session.get_bind().dialect.name == "postgresql":
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        _accounts(session, report)
        _journals(session, report)
        _settlements(session, report)
        _payments_and_refunds(session, report)
        _movements_per_account(session, report)
        _counterparts(session, report)
        _usage(session, report)
    return report


def _accounts(session: Session, report: LedgerReport) -> None:
    entries = (select(LedgerEntry.account_id, func.sum(LedgerEntry.amount_fen).label("total"))
               .group_by(LedgerEntry.account_id).subquery())
    rows = session.execute(
        select(Account.id, Account.kind, Account.balance_fen, func.coalesce(entries.c.total, 0).label("total"))
        .outerjoin(entries, entries.c.account_id == Account.id).order_by(Account.id)
    )
    for row in rows:
        report.accounts += 1
        if row.balance_fen != row.total:
            report.differences.append(
                f"account {row.id} ({row.kind}): balance_fen {row.balance_fen} != sum of ledger entries {row.total}")


def _journals(session: Session, report: LedgerReport) -> None:
    report.journals = session.scalar(select(func.count()).select_from(Journal)) or 0
    rows = session.execute(
        select(LedgerEntry.journal_id, func.sum(LedgerEntry.amount_fen).label("total"))
        .group_by(LedgerEntry.journal_id).having(func.sum(LedgerEntry.amount_fen) != 0)
        .order_by(LedgerEntry.journal_id)
    )
    for row in rows:
        report.differences.append(f"journal {row.journal_id}: entries sum to {row.total}, not 0")


def _settlements(session: Session, report: LedgerReport) -> None:
    paid = (select(Payment.settlement_id,
                   func.sum(Payment.amount_fen).filter(Payment.kind == "own").label("own"),
                   func.sum(Payment.amount_fen).filter(Payment.kind == "copay").label("copay"))
            .group_by(Payment.settlement_id).subquery())
    refunded = (select(Refund.settlement_id, func.sum(Refund.amount_fen).label("total"))
                .group_by(Refund.settlement_id).subquery())
    moved = (select(Journal.settlement_id, func.sum(LedgerEntry.amount_fen).label("total"))
             .join(LedgerEntry, LedgerEntry.journal_id == Journal.id)
             .join(Account, and_(Account.id == LedgerEntry.account_id, Account.kind == "personal"))
             .where(Journal.kind == "settlement").group_by(Journal.settlement_id).subquery())
    rows = session.execute(
        select(Settlement.id, Settlement.settlement_no, Settlement.total_fen, Settlement.own_account_fen,
               Settlement.copay_fen, Settlement.cash_fen, Settlement.refunded_fen,
               func.coalesce(paid.c.own, 0).label("own"), func.coalesce(paid.c.copay, 0).label("copay"),
               func.coalesce(refunded.c.total, 0).label("refunds"), func.coalesce(moved.c.total, 0).label("moved"))
        .outerjoin(paid, paid.c.settlement_id == Settlement.id)
        .outerjoin(refunded, refunded.c.settlement_id == Settlement.id)
        .outerjoin(moved, moved.c.settlement_id == Settlement.id)
        .order_by(Settlement.id)
    )
    for s in rows:
        report.settlements += 1
        where = f"settlement {s.settlement_no}"
        if s.total_fen != s.own_account_fen + s.copay_fen + s.cash_fen:
            report.differences.append(f"{where}: total {s.total_fen} != own + copay + cash")
        if (s.own, s.copay) != (s.own_account_fen, s.copay_fen):
            report.differences.append(f"{where}: payments own {s.own} / copay {s.copay} != settlement "
                                      f"{s.own_account_fen} / {s.copay_fen}")
        if -s.moved != s.own_account_fen + s.copay_fen:
            report.differences.append(f"{where}: its journal took {-s.moved} from personal accounts, "
                                      f"not {s.own_account_fen + s.copay_fen}")
        if s.refunds != s.refunded_fen:
            report.differences.append(f"{where}: refunds sum to {s.refunds} != refunded_fen {s.refunded_fen}")


def _payments_and_refunds(session: Session, report: LedgerReport) -> None:
    parts = (select(RefundPart.payment_id, func.sum(RefundPart.amount_fen).label("total"))
             .group_by(RefundPart.payment_id).subquery())
    rows = session.execute(
        select(Payment.id, Payment.refunded_fen, func.coalesce(parts.c.total, 0).label("parts"))
        .outerjoin(parts, parts.c.payment_id == Payment.id)
        .where(Payment.refunded_fen != func.coalesce(parts.c.total, 0))
    )
    for row in rows:
        report.differences.append(f"payment {row.id}: refunded_fen {row.refunded_fen} != refund parts {row.parts}")
    by_refund = (select(RefundPart.refund_id, func.sum(RefundPart.amount_fen).label("total"))
                 .group_by(RefundPart.refund_id).subquery())
    rows = session.execute(
        select(Refund.refund_no, Refund.amount_fen, Refund.cash_fen, func.coalesce(by_refund.c.total, 0).label("parts"))
        .outerjoin(by_refund, by_refund.c.refund_id == Refund.id)
        .where(Refund.amount_fen != Refund.cash_fen + func.coalesce(by_refund.c.total, 0))
    )
    for row in rows:
        report.differences.append(f"refund {row.refund_no}: amount {row.amount_fen} != cash {row.cash_fen} "
                                  f"+ parts {row.parts}")


def _usage(session: Session, report: LedgerReport) -> None:
    """Cap and binding usage, from co-pay payments less their refunds, by Shanghai service year (R8)."""
    cap: dict[tuple[int, int], int] = defaultdict(int)
    per_binding: dict[tuple[int, int], int] = defaultdict(int)
    rows = session.execute(
        select(Settlement.beneficiary_person_id, Settlement.service_time, Payment.binding_id,
               (Payment.amount_fen - Payment.refunded_fen).label("net"))
        .join(Settlement, Settlement.id == Payment.settlement_id)
        .where(Payment.kind == "copay")
        .execution_options(yield_per=10_000)
    )
    for row in rows:
        year = year_of(row.service_time)
        cap[(row.beneficiary_person_id, year)] += row.net
        if row.binding_id is not None:
            per_binding[(row.binding_id, year)] += row.net
    stored_cap = {(r.beneficiary_person_id, r.year): r.used_fen for r in session.execute(select(CapUsage))
                  .scalars()}
    stored_binding = {(r.binding_id, r.year): r.paid_fen for r in session.execute(select(BindingUsage)).scalars()}
    report.cap_rows, report.binding_rows = len(stored_cap), len(stored_binding)
    for (person_id, year) in sorted(cap.keys() | stored_cap.keys()):
        expected, stored = cap.get((person_id, year), 0), stored_cap.get((person_id, year), 0)
        if expected != stored:
            report.differences.append(f"cap_usage person {person_id} year {year}: used_fen {stored} != "
                                      f"co-pay paid less refunded {expected}")
    for (binding_id, year) in sorted(per_binding.keys() | stored_binding.keys()):
        expected, stored = per_binding.get((binding_id, year), 0), stored_binding.get((binding_id, year), 0)
        if expected != stored:
            report.differences.append(f"binding_usage binding {binding_id} year {year}: paid_fen {stored} != "
                                      f"co-pay paid less refunded {expected}")


def _movements_per_account(session: Session, report: LedgerReport) -> None:
    """Per (settlement, account) and (refund, account): what the journal moved on personal accounts
    against what the payments and refund parts record; only the rows that differ come back."""
    personal = and_(Account.id == LedgerEntry.account_id, Account.kind == "personal")
    for kind, owner_col, recorded in (
        ("settlement", Journal.settlement_id,
         select(Payment.settlement_id.label("owner_id"), Payment.account_id.label("account_id"),
                (-Payment.amount_fen).label("recorded"), literal(0).label("moved"))),
        ("refund", Journal.refund_id,
         select(RefundPart.refund_id.label("owner_id"), Payment.account_id.label("account_id"),
                RefundPart.amount_fen.label("recorded"), literal(0).label("moved"))
         .join(Payment, Payment.id == RefundPart.payment_id)),
    ):
        moved = (select(owner_col.label("owner_id"), LedgerEntry.account_id.label("account_id"),
                        literal(0).label("recorded"), LedgerEntry.amount_fen.label("moved"))
                 .join(LedgerEntry, LedgerEntry.journal_id == Journal.id).join(Account, personal)
                 .where(Journal.kind == kind))
        both = union_all(recorded, moved).subquery()
        rows = session.execute(
            select(both.c.owner_id, both.c.account_id, func.sum(both.c.recorded).label("recorded"),
                   func.sum(both.c.moved).label("moved"))
            .group_by(both.c.owner_id, both.c.account_id)
            .having(func.sum(both.c.recorded) != func.sum(both.c.moved))
            .order_by(both.c.owner_id, both.c.account_id)
        ).all()
        if not rows:
            continue
        model = Settlement if kind == "settlement" else Refund
        number = Settlement.settlement_no if kind == "settlement" else Refund.refund_no
        names = dict(session.execute(select(model.id, number).where(model.id.in_({r.owner_id for r in rows}))).all())
        for row in rows:
            what = "payments" if kind == "settlement" else "refund parts"
            report.differences.append(
                f"{kind} {names.get(row.owner_id, f'id {row.owner_id}')}: its journal moved {row.moved} on account "
                f"{row.account_id}, its {what} {row.recorded}")


def _counterparts(session: Session, report: LedgerReport) -> None:
    """The non-personal entries of settlement and refund journals: each must be on a clearing
    account (one of ``ledger.CLEARING_SHARDS``) of the institution that settled — for a refund, the
    refund's own institution; a journal that names no settlement (or refund) has none, so any
    such entry of it is a difference."""
    settled_by = case((Journal.kind == "refund", Refund.institution_id), else_=Settlement.institution_id)
    rows = session.execute(
        select(Journal.kind, Journal.id, Settlement.settlement_no, LedgerEntry.account_id,
               Account.kind.label("account_kind"))
        .join(LedgerEntry, LedgerEntry.journal_id == Journal.id)
        .join(Account, Account.id == LedgerEntry.account_id)
        .outerjoin(Settlement, Settlement.id == Journal.settlement_id)
        .outerjoin(Refund, Refund.id == Journal.refund_id)
        .where(Journal.kind.in_(("settlement", "refund")), Account.kind != "personal",
               or_(Account.kind != "institution", settled_by.is_(None),
                   Account.institution_id.is_distinct_from(settled_by)))
        .order_by(Journal.id, LedgerEntry.account_id)
    )
    for row in rows:
        report.differences.append(
            f"{row.kind} journal {row.id} of settlement {row.settlement_no or '(none)'}: account "
            f"{row.account_id} ({row.account_kind}) is not a clearing account of the institution that settled")
