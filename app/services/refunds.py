"""Refunds (R14): give money back to the accounts that paid, in reverse payment order, in one transaction.

Cash goes back first, then the co-pay owners from the last payer back, the beneficiary's own
account last (``settlement_plan.plan_refund``); never more than is left to refund. The co-pay part
gives the annual cap back in the year of the settlement's service time (R8), and each owner's
binding usage likewise. ``out_refund_no`` is idempotent per institution like ``out_settlement_no``
(R13). Locks follow the order of ``app.services.settlements``: the settlement row first (it
serialises refunds of one settlement), then the cap row, the accounts in id order, and the
institution's clearing account last.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import errors
from app.institution_auth import InstitutionIdentity
from app.policy import year_of
from app.security.pii import PiiCipher
from app.services.ledger import post_journal
from app.services.settlements import (
    LedgerInvariantBroken,
    MoneyDeps,
    Outcome,
    binding_usage_t,
    cap_usage_t,
    lock_accounts,
    lock_cap_row,
    masked_person,
    move_balance,
    new_number,
    payments_t,
)
from app.settlement_plan import PaidPart, RefundPlan, plan_refund
from app.timefmt import iso
from models import Account, Binding, Journal, LedgerEntry, Person, Refund, RefundPart, Settlement
from notify.outbox import AccountMovement, MoneyEvent, add_money_notices

refunds_t, settlements_t = Refund.__table__, Settlement.__table__


def refund_settlement(session: Session, deps: MoneyDeps, institution: InstitutionIdentity, settlement_no: str,
                      out_refund_no: str, amount_fen: int, request_hash: str, now: datetime) -> Outcome:
    """Refund ``amount_fen`` of a settlement made by this institution (others: 404), once per
    ``out_refund_no``: a replay returns the original 201 body, another body is ``IDEMPOTENCY_CONFLICT``."""
    try:
        with session.begin():
            settlement = session.execute(
                select(settlements_t.c.id, settlements_t.c.settlement_no, settlements_t.c.beneficiary_person_id,
                       settlements_t.c.service_time, settlements_t.c.total_fen, settlements_t.c.cash_fen,
                       settlements_t.c.refunded_fen)
                .where(settlements_t.c.settlement_no == settlement_no,
                       settlements_t.c.institution_id == institution.id)
                .with_for_update()
            ).first()
            if settlement is None:
                raise errors.NotFound("No such settlement.")
            # After the settlement lock: a duplicate that committed while we waited is seen here.
            if (replay := _replay(session, institution.id, out_refund_no, request_hash)) is not None:
                return replay
            payments = session.execute(
                select(payments_t).where(payments_t.c.settlement_id == settlement.id)
                .order_by(payments_t.c.sequence)
            ).all()
            year = year_of(settlement.service_time)
            if any(p.kind == "copay" and p.refunded_fen < p.amount_fen for p in payments):
                lock_cap_row(session, settlement.beneficiary_person_id, year)
            lock_accounts(session, (p.account_id for p in payments))
            parts = [PaidPart(kind=p.kind, account_id=str(p.account_id), owner_person_id=str(p.owner_person_id),
                              binding_id=None if p.binding_id is None else str(p.binding_id), sequence=p.sequence,
                              paid_fen=p.amount_fen, refunded_fen=p.refunded_fen) for p in payments]
            cash_refunded_fen = settlement.refunded_fen - sum(p.refunded_fen for p in payments)
            plan = plan_refund(parts, settlement.cash_fen, cash_refunded_fen, amount_fen)
            outcome, delivery_ids = _apply(session, deps, institution, settlement, payments, plan, out_refund_no,
                                           request_hash, year, now)
    except IntegrityError:
        # The same out_refund_no committed concurrently for another settlement: answer as R13 says.
        with session.begin():
            replay = _replay(session, institution.id, out_refund_no, request_hash)
        if replay is None:
            raise
        return replay
    deps.notifier.committed(delivery_ids)
    return outcome


def _replay(session: Session, institution_id: int, out_refund_no: str, request_hash: str) -> Outcome | None:
    row = session.execute(
        select(refunds_t.c.request_hash, refunds_t.c.response)
        .where(refunds_t.c.institution_id == institution_id, refunds_t.c.out_refund_no == out_refund_no)
    ).first()
    if row is None:
        return None
    if row.request_hash != request_hash:
        raise errors.IdempotencyConflict(details={"out_refund_no": out_refund_no})
    return Outcome(201, row.response, replayed=True)


def _apply(session: Session, deps: MoneyDeps, institution: InstitutionIdentity, settlement: Any,
           payments: list[Any], plan: RefundPlan, out_refund_no: str, request_hash: str, year: int,
           now: datetime) -> tuple[Outcome, list[int]]:
    by_sequence = {p.sequence: p for p in payments}
    credited = [(by_sequence[c.sequence], c) for c in plan.credits]
    people = _masked_people(session, deps.pii, {settlement.beneficiary_person_id}
                            | {p.owner_person_id for p, _ in credited})
    refunded_fen = settlement.refunded_fen + plan.amount_fen
    body = {
        "refund_no": new_number("R", now),
        "out_refund_no": out_refund_no,
        "settlement_no": settlement.settlement_no,
        "amount_fen": plan.amount_fen,
        "credits": [{"payer": people[p.owner_person_id], "kind": c.kind, "amount_fen": c.amount_fen}
                    for p, c in credited],
        "cash_fen": plan.cash_fen,
        "cap_restored_fen": plan.cap_restored_fen,
        "status": "succeeded",
        "settlement_status": "refunded" if refunded_fen == settlement.total_fen else "partially_refunded",
        "refunded_fen": refunded_fen,
        "refundable_fen": settlement.total_fen - refunded_fen,
        "created_at": iso(now),
    }
    refund_id = session.execute(
        insert(refunds_t).values(
            refund_no=body["refund_no"], settlement_id=settlement.id, institution_id=institution.id,
            out_refund_no=out_refund_no, request_hash=request_hash, amount_fen=plan.amount_fen,
            cash_fen=plan.cash_fen, cap_restored_fen=plan.cap_restored_fen, response=body, created_at=now,
        ).returning(refunds_t.c.id)
    ).scalar_one()
    session.execute(
        update(settlements_t).where(settlements_t.c.id == settlement.id)
        .values(refunded_fen=refunded_fen, status=body["settlement_status"])
    )
    if not credited:
        return Outcome(201, body), []  # cash only: no account moves

    movements, parts = [], []
    for payment, credit in credited:
        balance_after = move_balance(session, payment.account_id, credit.amount_fen, now)
        session.execute(update(payments_t).where(payments_t.c.id == payment.id)
                        .values(refunded_fen=payments_t.c.refunded_fen + credit.amount_fen))
        parts.append({"refund_id": refund_id, "payment_id": payment.id, "amount_fen": credit.amount_fen,
                      "balance_after_fen": balance_after, "owner_person_id": payment.owner_person_id,
                      "beneficiary_person_id": settlement.beneficiary_person_id,
                      "created_year": year_of(now)})
        movements.append(AccountMovement(payment.owner_person_id, credit.kind, credit.amount_fen, balance_after))
    session.execute(insert(RefundPart.__table__), parts)
    credited_fen = plan.own_account_fen + plan.copay_fen
    clearing_id = _credited_clearing_account(session, settlement.id, institution.id)
    entries = [*((p.account_id, c.amount_fen) for p, c in credited), (clearing_id, -credited_fen)]
    post_journal(session, "refund", entries, now, settlement_id=settlement.id, refund_id=refund_id,
                 memo=body["refund_no"])
    if plan.cap_restored_fen:
        session.execute(
            update(cap_usage_t)
            .where(cap_usage_t.c.beneficiary_person_id == settlement.beneficiary_person_id, cap_usage_t.c.year == year)
            .values(used_fen=cap_usage_t.c.used_fen - plan.cap_restored_fen)
        )
        for payment, credit in credited:
            if credit.kind == "copay" and payment.binding_id is not None:
                session.execute(
                    update(binding_usage_t)
                    .where(binding_usage_t.c.binding_id == payment.binding_id, binding_usage_t.c.year == year)
                    .values(paid_fen=binding_usage_t.c.paid_fen - credit.amount_fen)
                )
    delivery_ids = add_money_notices(
        session,
        MoneyEvent(settlement_id=settlement.id, settlement_no=settlement.settlement_no,
                   beneficiary_person_id=settlement.beneficiary_person_id,
                   beneficiary_masked_name=people[settlement.beneficiary_person_id]["name"],
                   institution_name=institution.name, at=now, refund_id=refund_id,
                   relationships=_relationships(session, (p for p, _ in credited))),
        movements,
    )
    move_balance(session, clearing_id, -credited_fen, now)  # last: the institution's row is the hottest
    return Outcome(201, body), delivery_ids


_CREDITED_CLEARING = (
    select(LedgerEntry.account_id)
    .join(Journal, Journal.id == LedgerEntry.journal_id)
    .join(Account, Account.id == LedgerEntry.account_id)
    .where(Journal.settlement_id == bindparam("settlement_id"), Journal.kind == "settlement",
           LedgerEntry.amount_fen > 0, Account.kind == "institution",
           Account.institution_id == bindparam("institution_id"))
)


def _credited_clearing_account(session: Session, settlement_id: int, institution_id: int) -> int:
    """The clearing account the settlement credited (its journal's one credit; an institution has
    several, ``ledger.CLEARING_SHARDS``): the refund takes the money back from that one. Only one
    of the settling institution's own accounts is taken (verify-ledger flags any other)."""
    credited = session.scalars(_CREDITED_CLEARING, {"settlement_id": settlement_id,
                                                    "institution_id": institution_id}).all()
    if len(credited) != 1:
        raise LedgerInvariantBroken(f"settlement {settlement_id}: {len(credited)} credits to this institution's "
                                    "clearing accounts in its journal, not 1")
    return credited[0]


def _masked_people(session: Session, pii: PiiCipher, person_ids: set[int]) -> dict[int, dict[str, Any]]:
    rows = session.execute(select(Person.id, Person.name_enc, Person.id_number_enc).where(Person.id.in_(person_ids)))
    return {row.id: masked_person(pii, row.id, row.name_enc, row.id_number_enc) for row in rows}


def _relationships(session: Session, payments: Iterable[Any]) -> dict[int, str]:
    """What the beneficiary is to each co-pay owner credited, for the notice text (R15)."""
    binding_ids = [p.binding_id for p in payments if p.binding_id is not None]
    if not binding_ids:
        return {}
    rows = session.execute(select(Binding.owner_person_id, Binding.relationship).where(Binding.id.in_(binding_ids)))
    return dict(rows.all())
