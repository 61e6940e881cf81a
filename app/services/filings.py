"""Staff inputs the settlement engine reads: off-site filings (R10) and chronic-disease
certifications (R8). Each is recorded at the service window, in one transaction with its audit event.

Dates are inclusive Asia/Shanghai dates (R20). A filing covers a 2-digit province or a 4-digit
prefecture prefix of the institution's region code.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import errors
from app.policy import shanghai_date
from app.security.id_number import PROVINCE_CODES, validate_id_number
from app.security.pii import PiiCipher, mask_text
from app.services import audit
from app.services.settlements import masked_person
from app.services.staff_accounts import require_staff_role
from app.timefmt import iso
from models import ChronicCertification, OffsiteFiling, Person

_REGION_PREFIX = re.compile(r"[0-9]{2}(?:[0-9]{2})?")
_DISEASE_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,31}")


def file_offsite(session: Session, pii: PiiCipher, staff_id: int, id_number: str, region_prefix: str,
                 valid_from: date, valid_to: date, now: datetime, ip: str | None = None,
                 reason: str | None = None) -> dict[str, Any]:
    """Record an off-site treatment filing (异地就医备案) for the insured person with this ID number."""
    if not _REGION_PREFIX.fullmatch(region_prefix) or region_prefix[:2] not in PROVINCE_CODES:
        raise errors.ValidationFailed("region_prefix must be a 2-digit province or a 4-digit prefecture code.",
                                      details={"field": "region_prefix"})
    _check_dates(valid_from, valid_to)
    number = validate_id_number(id_number, today=shanghai_date(now))
    with session.begin():
        require_staff_role(session, staff_id)
        person = _person(session, pii, number)
        filing_id = session.execute(
            insert(OffsiteFiling).values(person_id=person.id, region_prefix=region_prefix, valid_from=valid_from,
                                         valid_to=valid_to, created_by_staff_id=staff_id, created_at=now)
            .returning(OffsiteFiling.id)
        ).scalar_one()
        audit.record(session, actor_kind="staff", actor_id=staff_id, action="offsite_filing.create", at=now, ip=ip,
                     target_kind="offsite_filing", target_id=filing_id,
                     details={"person_id": person.id, "region_prefix": region_prefix,
                              "valid_from": valid_from.isoformat(), "valid_to": valid_to.isoformat(),
                              **_reason(reason)})
    return {"id": filing_id, "person": masked_person(pii, person.id, person.name_enc, person.id_number_enc),
            "region_prefix": region_prefix, "valid_from": valid_from.isoformat(), "valid_to": valid_to.isoformat(),
            "created_at": iso(now)}


def certify_chronic(session: Session, pii: PiiCipher, staff_id: int, id_number: str, disease_code: str,
                    valid_from: date, valid_to: date, now: datetime, ip: str | None = None,
                    reason: str | None = None) -> dict[str, Any]:
    """Record a chronic-disease certification (raises the beneficiary's annual cap, R8).

    The same person, disease and start date twice is ``INVALID_STATE``: certifications are never
    edited in place.
    """
    if not _DISEASE_CODE.fullmatch(disease_code):
        raise errors.ValidationFailed("disease_code must be 1 to 32 letters, digits, dots or dashes.",
                                      details={"field": "disease_code"})
    _check_dates(valid_from, valid_to)
    number = validate_id_number(id_number, today=shanghai_date(now))
    try:
        with session.begin():
            require_staff_role(session, staff_id)
            person = _person(session, pii, number)
            cert_id = session.execute(
                insert(ChronicCertification).values(person_id=person.id, disease_code=disease_code,
                                                    valid_from=valid_from, valid_to=valid_to,
                                                    created_by_staff_id=staff_id, created_at=now)
                .returning(ChronicCertification.id)
            ).scalar_one()
            audit.record(session, actor_kind="staff", actor_id=staff_id, action="chronic_certification.create",
                         at=now, ip=ip, target_kind="chronic_certification", target_id=cert_id,
                         # The disease is health data: the audit row points at the record, it does not copy it.
                         details={"person_id": person.id, "valid_from": valid_from.isoformat(),
                                  "valid_to": valid_to.isoformat(), **_reason(reason)})
    except IntegrityError:
        raise errors.InvalidState("This certification is already recorded.",
                                  details={"valid_from": valid_from.isoformat()}) from None
    return {"id": cert_id, "person": masked_person(pii, person.id, person.name_enc, person.id_number_enc),
            "disease_code": disease_code, "valid_from": valid_from.isoformat(), "valid_to": valid_to.isoformat(),
            "created_at": iso(now)}


def _reason(reason: str | None) -> dict[str, str]:
    """The console's optional note, as the audit row keeps it (ID and phone numbers masked, R17)."""
    text = mask_text(reason.strip())[:500] if isinstance(reason, str) else ""
    return {"reason": text} if text else {}


def _check_dates(valid_from: date, valid_to: date) -> None:
    if valid_from > valid_to:
        raise errors.ValidationFailed("valid_from must not be after valid_to.", details={"field": "valid_to"})


def _person(session: Session, pii: PiiCipher, id_number: str) -> Any:
    person = session.execute(
        select(Person.id, Person.name_enc, Person.id_number_enc)
        .where(Person.id_number_bidx == pii.blind_index(id_number, kind="id_number"))
    ).first()
    if person is None:
        raise errors.NotFound("No insured person has this ID number.")
    return person
