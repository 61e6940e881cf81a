"""Staff users for the service window (created by the operator CLI)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import errors
from app.services import audit
from app.services.auth import new_staff_token
from models import StaffUser

DEFAULT_TOKEN_TTL_SECONDS = 12 * 3600


def create_staff(session: Session, username: str, role: str, now: datetime,
                 token_ttl_seconds: int = DEFAULT_TOKEN_TTL_SECONDS) -> str:
    """Create ``username`` with ``role``, or rotate its token and role; return the new token, which
    is accepted for ``token_ttl_seconds`` (the old one stops working at once)."""
    token, hashed = new_staff_token()
    expires_at = now + timedelta(seconds=token_ttl_seconds)
    with session.begin():
        staff = session.scalar(select(StaffUser).where(StaffUser.username == username).with_for_update())
        if staff is None:
            staff = StaffUser(username=username, role=role, token_hash=hashed, created_at=now,
                              token_expires_at=expires_at)
            session.add(staff)
        else:
            staff.role, staff.token_hash, staff.active = role, hashed, True
            staff.token_expires_at, staff.token_revoked_at = expires_at, None
        session.flush()
        audit.record(session, actor_kind="operator", actor_id=None, action="staff.create", at=now,
                     target_kind="staff", target_id=staff.id, details={"username": username, "role": role})
    return token


def revoke_staff_token(session: Session, username: str, now: datetime, *, deactivate: bool = False) -> None:
    """Revoke the staff member's API token at once; with ``deactivate`` also disable the account
    (a later ``create-staff`` enables it again with a new token)."""
    with session.begin():
        staff = session.scalar(select(StaffUser).where(StaffUser.username == username).with_for_update())
        if staff is None:
            raise errors.NotFound("No staff user {username}.", params={"username": username})
        staff.token_revoked_at = staff.token_revoked_at or now
        if deactivate:
            staff.active = False
        audit.record(session, actor_kind="operator", actor_id=None,
                     action="staff.deactivate" if deactivate else "staff.revoke_token", at=now,
                     target_kind="staff", target_id=staff.id, details={"username": username})
STAFF_WRITE_ROLES = ("window", "admin")


def require_staff_role(session: Session, staff_id: int, roles: tuple[str, ...] = STAFF_WRITE_ROLES) -> None:
    """Inside the caller's transaction: ``staff_id`` is an active staff user with one of ``roles``
    (SPEC §5: window and admin act, auditors only read). The rule lives here, not only in the
    blueprints' decorators, so the API and the console cannot drift apart."""
    role = session.scalar(select(StaffUser.role).where(StaffUser.id == staff_id, StaffUser.active.is_(True)))
    if role not in roles:
        raise errors.Forbidden("This needs the role {roles}.", params={"roles": " / ".join(roles)})
