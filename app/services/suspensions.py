"""Suspensions for violations (R11): an owner's co-pay use, one binding, or a beneficiary.

Every suspension is a row in ``suspensions`` (the settlement engine reads them, with their
``starts_at``/``lifted_at``, to stop payments); a binding-scope one also turns the binding
``suspended`` and lifting it turns it back ``active`` — unless it was unbound meanwhile. Each
writes an authorization event on every binding it affects (so owners and beneficiaries see it
in their records, R16) and an audit event. Suspending and lifting are for admins only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import errors
from app.pagination import clamp_limit, decode_cursor, page
from app.policy import shanghai_date
from app.security.id_number import validate_id_number
from app.security.pii import PiiCipher
from app.services import audit
from app.services.auth import Principal
from app.services.bindings import Actor, add_event, clean_reason, lock_binding, pair_suspension
from app.services.identity import person_view
from models import LIVE_BINDING_STATES, Binding, Person, Suspension

ADMIN_ROLES = ("admin",)


def _require_admin(caller: Principal) -> None:
    if caller.kind != "staff" or caller.role not in ADMIN_ROLES:
        raise errors.Forbidden("This needs the role admin.")


def _live_bindings_of(session: Session, scope: str, person_id: int) -> list[Binding]:
    side = Binding.owner_person_id if scope == "owner" else Binding.beneficiary_person_id
    return list(session.scalars(select(Binding).where(side == person_id, Binding.status.in_(LIVE_BINDING_STATES))
                                .order_by(Binding.id)))


def _live_pair_binding(session: Session, suspended_binding_id: int) -> Binding | None:
    """The live binding (locked) of the pair whose binding ``suspended_binding_id`` was suspended."""
    pair = session.execute(select(Binding.owner_person_id, Binding.beneficiary_person_id)
                           .where(Binding.id == suspended_binding_id)).first()
    if pair is None:
        return None
    # The owner's person row first, as binding does: a binding being created for this pair right now
    # commits before we look (and is found) or waits for the lift (and is created active). FOR NO KEY
    # UPDATE, as every person lock: a settlement holding this pair's binding FOR SHARE checks the
    # foreign keys of the rows it writes with FOR KEY SHARE on the owner's person row, which FOR
    # UPDATE would block while we wait for that binding — a deadlock, and a 503 for one of the two.
    session.execute(select(Person.id).where(Person.id == pair.owner_person_id).with_for_update(key_share=True))
    live_id = session.scalar(select(Binding.id).where(
        Binding.owner_person_id == pair.owner_person_id, Binding.beneficiary_person_id == pair.beneficiary_person_id,
        Binding.status.in_(LIVE_BINDING_STATES)))
    return None if live_id is None else lock_binding(session, live_id)


def suspension_view(pii: PiiCipher, suspension: Suspension, person: Person | None,
                    affected_binding_ids: list[int] | None = None) -> dict[str, Any]:
    view = {
        "id": suspension.id,
        "scope": suspension.scope,
        "binding_id": suspension.binding_id,
        "person": person_view(pii, person) if person is not None else None,
        "reason": suspension.reason,
        "starts_at": suspension.starts_at,
        "lifted_at": suspension.lifted_at,
        "created_by_staff_id": suspension.created_by_staff_id,
        "lifted_by_staff_id": suspension.lifted_by_staff_id,
        "active": suspension.lifted_at is None,
    }
    if affected_binding_ids is not None:
        view["affected_binding_ids"] = affected_binding_ids
    return view


def suspend_copay(session: Session, *, pii: PiiCipher, caller: Principal, reason: str | None,
                  owner_id_number: str | None = None, binding_id: int | None = None,
                  beneficiary_id_number: str | None = None, now: datetime, ip: str | None = None) -> dict[str, Any]:
    """R11: suspend exactly one of an owner's co-pay use, a binding, or a beneficiary, with a reason."""
    _require_admin(caller)
    targets = {"owner": owner_id_number, "binding": binding_id, "beneficiary": beneficiary_id_number}
    given = [scope for scope, value in targets.items() if value is not None]
    if len(given) != 1:
        raise errors.ValidationFailed("Give exactly one of owner_id_number, binding_id, beneficiary_id_number.",
                                      details={"fields": ["owner_id_number", "binding_id", "beneficiary_id_number"]})
    scope = given[0]
    reason = clean_reason(reason, required=True)
    actor = Actor.of_staff(caller)
    with session.begin():
        person: Person | None = None
        if scope == "binding":
            binding = lock_binding(session, binding_id)  # type: ignore[arg-type]
            if binding is None:
                raise errors.NotFound("No such binding.")
            if binding.status != "active":
                raise errors.InvalidState("Only an active binding can be suspended; it is {status}.",
                                          params={"status": binding.status},
                                          details={"status": binding.status})
            binding.status = "suspended"
            affected = [binding]
        else:
            number = validate_id_number(targets[scope], today=shanghai_date(now))  # type: ignore[arg-type]
            person = session.scalar(
                select(Person).where(Person.id_number_bidx == pii.blind_index(number, kind="id_number"))
                .with_for_update())
            if person is None:
                raise errors.NotFound("No insured person has this ID number.", details={"field": f"{scope}_id_number"})
            existing = session.scalar(select(Suspension.id).where(
                Suspension.scope == scope, Suspension.person_id == person.id, Suspension.lifted_at.is_(None)))
            if existing is not None:
                raise errors.InvalidState("This person is already suspended.", details={"suspension_id": existing})
            affected = _live_bindings_of(session, scope, person.id)
        suspension = Suspension(scope=scope, person_id=person.id if person else None,
                                binding_id=binding_id if scope == "binding" else None, reason=reason,
                                starts_at=now, created_by_staff_id=caller.id, created_at=now)
        session.add(suspension)
        session.flush()
        affected_ids = [b.id for b in affected]
        for binding in affected:
            add_event(session, binding.id, "suspended", actor, now, reason,
                      details={"suspension_id": suspension.id, "scope": scope})
        audit.record(session, actor_kind="staff", actor_id=caller.id, action="suspension.create", at=now, ip=ip,
                     target_kind="suspension", target_id=suspension.id,
                     details={"scope": scope, "person_id": suspension.person_id, "binding_id": suspension.binding_id,
                              "reason": reason, "affected_binding_ids": affected_ids})
    return suspension_view(pii, suspension, person, affected_ids)


def lift_suspension(session: Session, *, pii: PiiCipher, caller: Principal, suspension_id: int,
                    reason: str | None = None, now: datetime, ip: str | None = None) -> dict[str, Any]:
    """R11: lift a suspension; a suspended binding becomes active again unless it was unbound meanwhile."""
    _require_admin(caller)
    reason = clean_reason(reason)
    actor = Actor.of_staff(caller)
    with session.begin():
        suspension = session.scalar(select(Suspension).where(Suspension.id == suspension_id).with_for_update()
                                    .execution_options(populate_existing=True))
        if suspension is None:
            raise errors.NotFound("No such suspension.")
        if suspension.lifted_at is not None:
            raise errors.InvalidState("This suspension was already lifted.")
        suspension.lifted_at, suspension.lifted_by_staff_id = now, caller.id
        if suspension.scope == "binding":
            # R11: the suspension was of the pair. Its live binding — the suspended row itself, or one
            # made after an unbind — becomes active again unless another pair suspension still holds.
            binding = _live_pair_binding(session, suspension.binding_id)  # type: ignore[arg-type]
            affected = []
            if (binding is not None and binding.status == "suspended" and pair_suspension(
                    session, binding.owner_person_id, binding.beneficiary_person_id, excluding=suspension.id) is None):
                binding.status = "active"
                affected = [binding]
        else:
            affected = _live_bindings_of(session, suspension.scope, suspension.person_id)  # type: ignore[arg-type]
        affected_ids = [b.id for b in affected]
        for binding in affected:
            add_event(session, binding.id, "lifted", actor, now, reason,
                      details={"suspension_id": suspension.id, "scope": suspension.scope})
        audit.record(session, actor_kind="staff", actor_id=caller.id, action="suspension.lift", at=now, ip=ip,
                     target_kind="suspension", target_id=suspension.id,
                     details={"scope": suspension.scope, "reason": reason, "affected_binding_ids": affected_ids})
        person = session.get(Person, suspension.person_id) if suspension.person_id else None
    return suspension_view(pii, suspension, person, affected_ids)


def list_suspensions(session: Session, *, pii: PiiCipher, active: bool | None = None, cursor: str | None = None,
                     limit: int | None = None) -> dict[str, Any]:
    """Suspensions newest first (``active`` narrows to unlifted or lifted ones), keyset-paginated."""
    limit = clamp_limit(limit)
    last_id = decode_cursor(cursor)
    query = select(Suspension, Person).outerjoin(Person, Person.id == Suspension.person_id)
    if active is not None:
        query = query.where(Suspension.lifted_at.is_(None) if active else Suspension.lifted_at.is_not(None))
    if last_id is not None:
        query = query.where(Suspension.id < last_id)
    with session.begin():
        rows = session.execute(query.order_by(Suspension.id.desc()).limit(limit + 1)).all()
    return page(rows, limit, lambda row: row[0].id, lambda row: suspension_view(pii, row[0], row[1]))
