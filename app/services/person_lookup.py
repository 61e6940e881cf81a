"""Staff look-up of one insured person by ID number (参保人查询), for the console.

The ID number is matched exactly through the blind index (R17) and never returned: the view holds
masked values only. Each look-up is an audit event naming the person (by id) and the masked
number searched. The parts that users see too (deduction records, annual-cap use, notices) come
from the same services the mini-program API uses, bounded to this person.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, aliased

from app import errors
from app.policy import RegionPolicy, shanghai_date
from app.security.id_number import validate_id_number
from app.security.pii import PiiCipher, mask_card_no, mask_id_number, mask_mobile
from app.services import audit, records
from app.services.auth import Principal
from app.services.authorizations import record_view
from app.services.bindings import active_person_suspensions, binding_view
from app.services.identity import person_view
from app.services.identity_links import linked_accounts
from app.services.suspensions import suspension_view
from models import (
    Account,
    AuthorizationEvent,
    Binding,
    ChronicCertification,
    OffsiteFiling,
    Person,
    Suspension,
)
from notify import inbox

LATEST = 10


def _reserved_phone(pii: PiiCipher, person: Person) -> str | None:
    # Reserved phone numbers (R21) arrive with issue 9; show the masked number once the column exists.
    encrypted = getattr(person, "phone_enc", None)
    if not encrypted:
        return None
    return mask_mobile(pii.decrypt(encrypted, context="person.phone"))


def look_up_person(session: Session, *, pii: PiiCipher, policy: RegionPolicy, caller: Principal, id_number: str,
                   now: datetime, ip: str | None = None) -> dict[str, Any]:
    """Everything the window needs about the person with this ID number, masked (R17)."""
    if caller.kind != "staff":
        raise errors.Forbidden("This is for service-window staff.")
    number = validate_id_number(id_number, today=shanghai_date(now))
    bidx = pii.blind_index(number, kind="id_number")
    with session.begin():
        person = session.scalar(select(Person).where(Person.id_number_bidx == bidx))
        audit.record(session, actor_kind="staff", actor_id=caller.id, action="person.lookup", at=now, ip=ip,
                     target_kind="person", target_id=person.id if person else None,
                     details={"id_number": mask_id_number(number), "found": person is not None})
    if person is None:
        raise errors.NotFound("No insured person has this ID number.")
    with session.begin():
        balance = session.scalar(select(Account.balance_fen).where(Account.person_id == person.id,
                                                                   Account.kind == "personal"))
        owner_p, member_p = aliased(Person), aliased(Person)
        binding_rows = session.execute(
            select(Binding, owner_p, member_p)
            .join(owner_p, owner_p.id == Binding.owner_person_id)
            .join(member_p, member_p.id == Binding.beneficiary_person_id)
            .where(or_(Binding.owner_person_id == person.id, Binding.beneficiary_person_id == person.id))
            .order_by(Binding.id.desc()).limit(50)
        ).all()
        held = active_person_suspensions(session, [r[1].id for r in binding_rows] + [r[2].id for r in binding_rows]
                                         + [person.id])
        binding_ids = [r[0].id for r in binding_rows]
        filings = session.scalars(select(OffsiteFiling).where(OffsiteFiling.person_id == person.id)
                                  .order_by(OffsiteFiling.id.desc()).limit(LATEST)).all()
        certifications = session.scalars(
            select(ChronicCertification).where(ChronicCertification.person_id == person.id)
            .order_by(ChronicCertification.id.desc()).limit(LATEST)).all()
        suspension_where = [Suspension.person_id == person.id]
        if binding_ids:
            suspension_where.append(Suspension.binding_id.in_(binding_ids))
        suspensions = session.scalars(select(Suspension).where(or_(*suspension_where))
                                      .order_by(Suspension.id.desc()).limit(LATEST)).all()
        events = session.scalars(select(AuthorizationEvent).where(AuthorizationEvent.binding_id.in_(binding_ids))
                                 .order_by(AuthorizationEvent.id.desc()).limit(LATEST)).all() if binding_ids else []
        accounts = linked_accounts(session, pii, person.id)
    as_owner, as_beneficiary = [], []
    for binding, owner, member in binding_rows:
        view = binding_view(pii, binding, owner, member, suspensions=held)
        (as_owner if owner.id == person.id else as_beneficiary).append(view)
    today = shanghai_date(now)
    return {
        "person": person_view(pii, person) | {
            "social_card_no": mask_card_no(pii.decrypt(person.social_card_no_enc, context="person.social_card_no")),
            "insurance_type": person.insurance_type, "region_code": person.region_code, "status": person.status,
            "phone": _reserved_phone(pii, person),
        },
        "balance_fen": balance,
        "bindings_as_owner": as_owner,
        "bindings_as_beneficiary": as_beneficiary,
        "quota": records.quota(session, pii, policy, person.id, today.year, today)["items"],
        "filings": [{"id": f.id, "region_prefix": f.region_prefix, "valid_from": f.valid_from,
                     "valid_to": f.valid_to, "revoked_at": f.revoked_at} for f in filings],
        "certifications": [{"id": c.id, "disease_code": c.disease_code, "valid_from": c.valid_from,
                            "valid_to": c.valid_to, "revoked_at": c.revoked_at} for c in certifications],
        "suspensions": [suspension_view(pii, s, person if s.person_id == person.id else None) for s in suspensions],
        "suspended_as_owner": ("owner", person.id) in held,
        "suspended_as_beneficiary": ("beneficiary", person.id) in held,
        "deductions_as_owner": records.deductions(session, pii, person.id, "owner", None, LATEST, None)["items"],
        "deductions_as_beneficiary": records.deductions(session, pii, person.id, "beneficiary", None, LATEST,
                                                        None)["items"],
        "notices": inbox.list_notifications(session, person.id, None, LATEST)["items"],
        "authorizations": [record_view(e, for_staff=True) for e in events],
        # R21: the sign-ins linked to this person (masked, no openid); the window may end one.
        "linked_accounts": accounts,
    }
