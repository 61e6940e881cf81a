"""Identity verification (link a user to a registry person) and the ``GET /me`` view."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import errors
from app.policy import names_match, shanghai_date
from app.security.id_number import validate_id_number
from app.security.pii import PiiCipher, mask_id_number, mask_name
from app.services import audit
from models import Account, Person, User


def verify_identity(session: Session, pii: PiiCipher, user_id: int, name: str, id_number: str,
                    now: datetime, ip: str | None = None) -> dict[str, Any]:
    """Link the user to the registry person with this name and ID number (R18 checked first).

    A wrong name and an unknown ID number give the same ``IDENTITY_MISMATCH``, so the endpoint
    cannot be used to find out who is insured.
    """
    number = validate_id_number(id_number, today=shanghai_date(now))
    with session.begin():
        user = session.get_one(User, user_id, with_for_update=True)
        bidx = pii.blind_index(number, kind="id_number")
        person = session.scalar(select(Person).where(Person.id_number_bidx == bidx))
        matched = person is not None and names_match(pii.decrypt(person.name_enc, context="person.name"), name)
        audit.record(session, actor_kind="user", actor_id=user_id, action="identity.verify", at=now, ip=ip,
                     details={"matched": matched, "person_id": person.id if matched and person else None})
        if not matched or person is None:
            failed = errors.IdentityMismatch()
        elif user.person_id is not None and user.person_id != person.id:
            failed = errors.InvalidState("This sign-in is already verified as another person.")
        else:
            failed = None
            user.person_id = person.id
            user.verified_at = user.verified_at or now
    # The audit row of a failed attempt is committed before the error is raised.
    if failed is not None:
        raise failed
    return {"verified": True, "person": person_view(pii, person)}


def person_view(pii: PiiCipher, person: Person) -> dict[str, Any]:
    """The masked person, as every response shows it (R17)."""
    return {
        "person_id": person.id,
        "name": mask_name(pii.decrypt(person.name_enc, context="person.name")),
        "id_number": mask_id_number(pii.decrypt(person.id_number_enc, context="person.id_number")),
    }


def describe_me(session: Session, pii: PiiCipher, policy: Any, user_id: int) -> dict[str, Any]:
    """The signed-in user, their masked person, their balance (owners) and the region policy."""
    with session.begin():
        user = session.get_one(User, user_id)
        result: dict[str, Any] = {
            "user": {"id": user.id, "channel": user.channel, "verified": user.person_id is not None},
            "person": None,
            "account": None,
            "policy": policy.summary(),
        }
        if user.person_id is not None:
            person = session.get_one(Person, user.person_id)
            result["person"] = person_view(pii, person) | {
                "insurance_type": person.insurance_type,
                "region_code": person.region_code,
                "status": person.status,
            }
            account = session.scalar(select(Account).where(Account.person_id == person.id))
            if account is not None:
                result["account"] = {"balance_fen": account.balance_fen}
        return result
