"""What users may read about money (R16): deduction records and annual-cap use (quota).

An owner sees what left (and came back to) their own account; a beneficiary sees what was paid
for them — without the payers' balances, which are the owners' business. Nobody sees anything
else: every query is bounded by the caller's own person id.

Deduction records merge two keyset streams, payments and refund credits, newest first; the
cursor carries the last id seen in each stream, so a page never repeats or skips a row.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from datetime import date
from typing import Any

from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import Session

from app import errors
from app.pagination import clamp_limit
from app.policy import RegionPolicy, cap_for
from app.security.pii import PiiCipher
from app.services.settlements import masked_person
from app.timefmt import iso
from models import (
    Binding,
    BindingUsage,
    CapUsage,
    ChronicCertification,
    Institution,
    Payment,
    Person,
    Refund,
    RefundPart,
    Settlement,
)

ROLES = ("owner", "beneficiary")


def deductions(session: Session, pii: PiiCipher, person_id: int | None, role: str, year: int | None,
               limit: int | None, cursor: str | None) -> dict[str, Any]:
    """``{items, next_cursor}``: the caller's deduction records as owner or beneficiary, newest first."""
    if person_id is None:
        return {"items": [], "next_cursor": None}
    if role not in ROLES:
        raise errors.ValidationFailed("role must be owner or beneficiary.", details={"field": "role"})
    limit = clamp_limit(limit)
    after = _decode_cursor(cursor)
    with session.begin():
        paid = _payment_rows(session, person_id, role, year, after.get("p"), limit + 1)
        refunded = _refund_rows(session, person_id, role, year, after.get("r"), limit + 1)
        shown, last_ids = _merge(paid, refunded, limit)
        more = len(shown) == limit and (len(paid) + len(refunded) > len(shown))
        people = _masked_people(session, pii, {r.beneficiary_person_id for r in shown}
                                | {r.owner_person_id for r in shown})
    items = [_record(row, people, person_id, role) for row in shown]
    next_cursor = _encode_cursor({**after, **last_ids}) if more else None
    return {"items": items, "next_cursor": next_cursor}


def _payment_rows(session: Session, person_id: int, role: str, year: int | None, before: int | None,
                  count: int) -> list[Any]:
    # Each variant is one index range of payments, newest first (ix_payments_owner / _beneficiary,
    # with _year when a year is asked): the same plan whether the caller has two rows or 200,000.
    return list(session.execute(_PAYMENTS[role, year is not None],
                                {"person_id": person_id, "year": year, "before": min(before or _NO_CURSOR, _NO_CURSOR),
                                 "count": count}))


def _refund_rows(session: Session, person_id: int, role: str, year: int | None, before: int | None,
                 count: int) -> list[Any]:
    # Refund credits by their own copied owner/beneficiary/year columns (ix_refund_parts_*): a
    # generic prepared-statement plan cannot wander into walking an owner's payments.
    return list(session.execute(_REFUNDS[role, year is not None],
                                {"person_id": person_id, "year": year, "before": min(before or _NO_CURSOR, _NO_CURSOR),
                                 "count": count}))


_NO_CURSOR = 2**62  # "before the first page": larger than any id, so the keyset predicate is always there


def _records_query(role: str, by_year: bool, refunds: bool) -> Any:
    """The statement of one stream (payments or refund credits) for one role, with or without a
    year; built once at import: the hot path only binds values."""
    if refunds:
        rows, order_id = RefundPart, RefundPart.id
        query = (
            select(RefundPart.id, Payment.kind.label("payment_kind"), RefundPart.amount_fen,
                   RefundPart.balance_after_fen, RefundPart.owner_person_id, Refund.refund_no,
                   Settlement.settlement_no, RefundPart.beneficiary_person_id, Settlement.service_time,
                   Refund.created_at, Institution.code.label("institution_code"),
                   Institution.name.label("institution_name"), Settlement.auth_method)
            .select_from(RefundPart)
            .join(Payment, Payment.id == RefundPart.payment_id)
            .join(Refund, Refund.id == RefundPart.refund_id)
            .join(Settlement, Settlement.id == Refund.settlement_id)
        )
    else:
        rows, order_id = Payment, Payment.id
        query = (
            select(Payment.id, Payment.kind, Payment.amount_fen, Payment.balance_after_fen, Payment.owner_person_id,
                   Settlement.settlement_no, Payment.beneficiary_person_id, Settlement.service_time,
                   Settlement.created_at, Institution.code.label("institution_code"),
                   Institution.name.label("institution_name"), Settlement.auth_method)
            .select_from(Payment)
            .join(Settlement, Settlement.id == Payment.settlement_id)
        )
    who = rows.owner_person_id if role == "owner" else rows.beneficiary_person_id
    query = (query.join(Institution, Institution.id == Settlement.institution_id)
             .where(who == bindparam("person_id"), order_id < bindparam("before")).limit(bindparam("count")))
    if by_year:
        # One year, as a range of one: with the year fixed, ordering by (year, id) is ordering by id,
        # and written as a range (not ``=``, which the planner would fold into a constant) only the
        # (person, year, id) index gives that order — no plan can walk the newer years' rows first.
        return (query.where(rows.created_year >= bindparam("year"), rows.created_year <= bindparam("year"))
                .order_by(rows.created_year.desc(), order_id.desc()))
    return query.order_by(order_id.desc())


_VARIANTS = [(role, by_year) for role in ROLES for by_year in (False, True)]
_PAYMENTS = {variant: _records_query(*variant, refunds=False) for variant in _VARIANTS}
_REFUNDS = {variant: _records_query(*variant, refunds=True) for variant in _VARIANTS}


def _merge(paid: list[Any], refunded: list[Any], limit: int) -> tuple[list[Any], dict[str, int]]:
    """Take up to ``limit`` rows newest first, always from the head of a stream (so each stream is
    consumed in its own id order and the cursor can resume each one exactly)."""
    shown: list[Any] = []
    last: dict[str, int] = {}
    i = j = 0
    while len(shown) < limit and (i < len(paid) or j < len(refunded)):
        take_payment = j >= len(refunded) or (i < len(paid) and paid[i].created_at >= refunded[j].created_at)
        if take_payment:
            shown.append(paid[i])
            last["p"] = paid[i].id
            i += 1
        else:
            shown.append(refunded[j])
            last["r"] = refunded[j].id
            j += 1
    return shown, last


def _record(row: Any, people: dict[int, dict[str, Any]], viewer_id: int, role: str) -> dict[str, Any]:
    refund = hasattr(row, "refund_no")
    # R16: a beneficiary learns what was paid for them, not how much the payer has left.
    balance_visible = role == "owner" or row.owner_person_id == viewer_id
    return {
        "settlement_no": row.settlement_no,
        "refund_no": row.refund_no if refund else None,
        "institution": {"code": row.institution_code, "name": row.institution_name},
        "beneficiary": people[row.beneficiary_person_id],
        "owner": people[row.owner_person_id],
        "kind": "refund" if refund else row.kind,
        "payment_kind": row.payment_kind if refund else row.kind,
        "amount_fen": row.amount_fen,
        "balance_after_fen": row.balance_after_fen if balance_visible else None,
        "service_time": iso(row.service_time),
        "created_at": iso(row.created_at),
        "auth_method": row.auth_method,  # R12: how the settlement was authorised (voucher | card)
    }


def _masked_people(session: Session, pii: PiiCipher, person_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = list(set(person_ids))
    if not ids:
        return {}
    rows = session.execute(select(Person.id, Person.name_enc, Person.id_number_enc).where(Person.id.in_(ids)))
    return {row.id: masked_person(pii, row.id, row.name_enc, row.id_number_enc) for row in rows}


def _encode_cursor(last_ids: dict[str, int]) -> str:
    return base64.urlsafe_b64encode(json.dumps(last_ids, sort_keys=True).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> dict[str, int]:
    if not cursor:
        return {}
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError):
        value = None
    if not (isinstance(value, dict) and value and set(value) <= {"p", "r"}
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value.values())):
        raise errors.ValidationFailed("The cursor is not valid.", details={"cursor": "malformed"})
    return value


# --------------------------------------------------------------------------- quota


def quota(session: Session, pii: PiiCipher, policy: RegionPolicy, person_id: int | None, year: int,
          today: date) -> dict[str, Any]:
    """``{items}``: the annual-cap use of the caller (when they are a beneficiary) and of each
    beneficiary of the caller's active or suspended bindings, with the caller's own limit (R8, R16)."""
    if person_id is None:
        return {"items": []}
    # The certification that counts: valid today in the current year, else on the year's nearest day.
    on = min(max(today, date(year, 1, 1)), date(year, 12, 31))
    with session.begin():
        bindings = session.execute(
            select(Binding.id, Binding.beneficiary_person_id, Binding.relationship, Binding.yearly_limit_fen,
                   Binding.status, BindingUsage.paid_fen)
            .outerjoin(BindingUsage, and_(BindingUsage.binding_id == Binding.id, BindingUsage.year == year))
            .where(Binding.owner_person_id == person_id, Binding.status.in_(("active", "suspended")))
            .order_by(Binding.id)
        ).all()
        self_linked = session.scalar(
            select(Binding.id).where(Binding.beneficiary_person_id == person_id,
                                     Binding.status.in_(("active", "suspended"))).limit(1)
        ) is not None
        used = dict(session.execute(
            select(CapUsage.beneficiary_person_id, CapUsage.used_fen)
            .where(CapUsage.beneficiary_person_id.in_([person_id, *(b.beneficiary_person_id for b in bindings)]),
                   CapUsage.year == year)
        ).all())
        show_self = self_linked or person_id in used
        beneficiaries = ([person_id] if show_self else []) + [b.beneficiary_person_id for b in bindings]
        certified = set(session.scalars(
            select(ChronicCertification.person_id)
            .where(ChronicCertification.person_id.in_(beneficiaries), ChronicCertification.revoked_at.is_(None),
                   ChronicCertification.valid_from <= on, ChronicCertification.valid_to >= on)
        ))
        people = _masked_people(session, pii, beneficiaries)

    def item(beneficiary_id: int) -> dict[str, Any]:
        cap_fen = cap_for(policy, beneficiary_id in certified)
        used_fen = used.get(beneficiary_id, 0)
        return {"beneficiary": people[beneficiary_id], "year": year, "cap_fen": cap_fen, "used_fen": used_fen,
                "remaining_fen": None if cap_fen is None else max(0, cap_fen - used_fen)}

    items = [item(person_id) | {"as": "beneficiary"}] if show_self else []
    for b in bindings:
        items.append(item(b.beneficiary_person_id) | {
            "as": "owner", "binding_id": b.id, "relationship": b.relationship, "binding_status": b.status,
            "yearly_limit_fen": b.yearly_limit_fen, "paid_by_you_fen": b.paid_fen or 0,
        })
    return {"items": items}
