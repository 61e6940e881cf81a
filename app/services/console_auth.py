"""Sign-in to the service-window console (issue 12): password (argon2id) + TOTP (RFC 6238),
server-side sessions with an idle and an absolute timeout, lock-out with back-off, password change.

Why server-side sessions: the cookie carries only a random id (its SHA-256 is stored), so logout,
a password change or a timeout ends the session for good — a copied cookie replayed later is
refused, which a signed-cookie session alone cannot promise. A credential change also gives the
session that made it a new id (``_rotate_session``).

Lock-out: failures are counted per account (``user:<username>``) and per client address
(``ip:<address>``, an IPv6 client by its /64: ``address_key``); from the 5th failure on, each
further failure locks that key for ``backoff_seconds(failures)`` (1 min, doubling, at most 1 h);
while either key is locked no password is even checked. A success clears the account's count, never
the address's (an attacker with one valid account must not be able to reset the address spraying
passwords at others). Counts older than ``FAILURE_MEMORY`` start again from zero. Every sign-in,
failure, lock-out, logout, timeout and password change is an audit event; the audit row of a failure
is committed before the error is raised.

What was typed as the username is kept only when it names a staff account. Anything else may be a
password typed into the wrong field (a common slip), so neither the audit log nor the lock-out table
keeps its text (R17): the audit row says an unknown username was tried, with its length and a keyed
hash (the blind index of ``app/security/pii.py``, kind ``console_username``) that lets repeated
attempts be correlated, and the account's lock-out counts under that same hash.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app import errors
from app.security.pii import PiiCipher
from app.services import audit
from app.services.auth import Principal
from models import AuditEvent, ConsoleLockout, ConsoleSession, StaffUser

IDLE_TIMEOUT = timedelta(minutes=15)
ABSOLUTE_TIMEOUT = timedelta(hours=8)
MAX_FAILURES = 5
FAILURE_MEMORY = timedelta(hours=1)
MIN_PASSWORD_CHARS = 12
TOTP_ISSUER = "门诊共济窗口"
TOTP_CONTEXT = "staff.totp_secret"

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (t=3, 64 MiB, p=4)
# Verified against when the username is unknown, so a wrong username costs the same time as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def use_cheap_hashing_for_tests() -> None:
    """Test apps only (``TESTING``): argon2id with 1 pass over 1 MiB, so the suite does not spend its
    time hashing. Verification reads the parameters from each stored hash, so both kinds verify."""
    global _hasher, _DUMMY_HASH
    _hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    _DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def backoff_seconds(failures: int) -> int:
    """How long a key is locked after its ``failures``-th consecutive failure: nothing before the
    5th, then 60 s doubling with every further failure, at most one hour."""
    if failures < MAX_FAILURES:
        return 0
    return min(60 * 2 ** (failures - MAX_FAILURES), 3600)


def check_password_rules(password: str, username: str) -> None:
    """At least 12 characters, not the username. (Length beats composition rules: NIST SP 800-63B.)"""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS:
        raise errors.ValidationFailed("The password must have at least {count} characters.",
                                      params={"count": MIN_PASSWORD_CHARS},
                                      details={"field": "password", "reason": "too_short"})
    if password.strip().lower() == username.strip().lower():
        raise errors.ValidationFailed("The password must not be the username.",
                                      details={"field": "password", "reason": "is_username"})


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _password_ok(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def totp_step(secret: str, code: str, at: datetime) -> int | None:
    """The RFC 6238 time step ``code`` belongs to (this one or one either side, for clock drift), or None."""
    # ASCII digits only: "１２３４５６" passes str.isdigit(), and hmac.compare_digest raises on non-ASCII
    # text, which turned a right password with such a code into a crash instead of a counted failure.
    if not isinstance(code, str) or not (code.isascii() and code.isdigit()) or len(code) != 6:
        return None
    totp = pyotp.TOTP(secret)
    for drift in (0, -1, 1):
        moment = at + timedelta(seconds=30 * drift)
        if hmac.compare_digest(totp.at(moment), code):
            return totp.timecode(moment)
    return None


def new_totp_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ConsoleUser:
    """The signed-in staff member of a console request."""

    id: int
    username: str
    role: str
    session_id: int

    @property
    def principal(self) -> Principal:
        return Principal(kind="staff", id=self.id, role=self.role)


# --- credentials (operator CLI and the console's own account page) --------------------------------


def set_console_credentials(session: Session, pii: PiiCipher, username: str, password: str,
                            now: datetime, totp_secret: str | None = None) -> str:
    """Give an existing staff user a console password and a new TOTP secret; return the secret.
    (``totp_secret`` is for the demo only, whose secrets are published so anyone can try it.)

    Ends every open console session of that user (the credentials they were opened with are gone).
    """
    with session.begin():
        staff = session.scalar(select(StaffUser).where(StaffUser.username == username).with_for_update())
        if staff is None:
            raise errors.NotFound("No such staff user.")
        check_password_rules(password, username)
        secret = totp_secret or new_totp_secret()
        staff.password_hash = hash_password(password)
        staff.totp_secret_enc = pii.encrypt(secret, context=TOTP_CONTEXT)
        staff.totp_last_step = None
        staff.password_changed_at = now
        _end_sessions(session, staff.id, now, "password")
        audit.record(session, actor_kind="operator", actor_id=None, action="console.credentials_set", at=now,
                     target_kind="staff", target_id=staff.id, details={"username": username})
    return secret


# --- lock-out -------------------------------------------------------------------------------------


def _lock_rows(session: Session, keys: list[str], now: datetime) -> dict[str, ConsoleLockout]:
    """The lock-out rows of ``keys``, created when missing and locked for update (in key order)."""
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    for key in sorted(keys):
        session.execute(insert(ConsoleLockout).values(key=key, failures=0, updated_at=now)
                        .on_conflict_do_nothing(index_elements=["key"]))
    rows = session.scalars(select(ConsoleLockout).where(ConsoleLockout.key.in_(keys))
                           .order_by(ConsoleLockout.key).with_for_update()
                           .execution_options(populate_existing=True))
    found = {row.key: row for row in rows}
    for row in found.values():
        if row.updated_at < now - FAILURE_MEMORY and (row.locked_until is None or row.locked_until <= now):
            row.failures, row.locked_until = 0, None
    return found


def username_hmac(pii: PiiCipher, username: str) -> str:
    """The keyed hash of a typed username (the blind index: strip, NFKC, case folded to upper)."""
    return pii.blind_index(username, kind="console_username")


def address_key(ip: str) -> str:
    """The client part of an address for the per-address lock-out: an IPv4 address as it is, an
    IPv6 address as its /64 network (one host or home gets a whole /64 and could otherwise try from
    2^64 addresses), an IPv4-mapped IPv6 address as the IPv4 address it maps."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _keys(typed_hmac: str, ip: str) -> tuple[str, str]:
    """The lock-out keys of an attempt: the typed username's keyed hash (never its text), the
    address (its /64 for IPv6, ``address_key``)."""
    return f"user:{typed_hmac}", f"ip:{address_key(ip)}"


def _who_tried(username: str, typed_hmac: str, staff: StaffUser | None) -> dict[str, Any]:
    """The audit details naming what was typed as the username: the account's name when it names
    one; else only that an unknown one was tried, its length and keyed hash — maybe a password (R17)."""
    if staff is not None:
        return {"username": staff.username}
    return {"unknown_username": {"length": len(username.strip()), "hmac": typed_hmac}}


# --- sign-in, sessions, sign-out -------------------------------------------------------------------


def sign_in(session: Session, pii: PiiCipher, *, username: str, password: str, code: str, ip: str,
            now: datetime) -> str:
    """Check username, password and TOTP code; return a new session token (for the cookie).

    Every failure answers the same ``SignInFailed`` whichever factor was wrong; a locked account or
    address answers ``SignInLocked`` with ``retry_after`` and checks nothing.
    """
    typed_hmac = username_hmac(pii, username)
    user_key, ip_key = _keys(typed_hmac, ip)
    failure: errors.DomainError | None = None
    token = secrets.token_urlsafe(32)
    with session.begin():
        locks = _lock_rows(session, [user_key, ip_key], now)
        staff = session.scalar(select(StaffUser).where(StaffUser.username == username.strip())
                               .with_for_update())
        who_tried = _who_tried(username, typed_hmac, staff)
        locked = [row for row in locks.values() if row.locked_until is not None and row.locked_until > now]
        if locked:
            wait = max(int((row.locked_until - now).total_seconds()) + 1 for row in locked)  # type: ignore[operator]
            audit.record(session, actor_kind="staff", actor_id=staff.id if staff else None,
                         action="console.sign_in_locked", at=now, ip=ip,
                         details={**who_tried, "locked": sorted(row.key.split(":")[0] for row in locked),
                                  "retry_after": wait})
            failure = errors.SignInLocked(details={"retry_after": wait})
        else:
            ok = _password_ok(staff.password_hash if staff else None, password)
            step = None
            if ok and staff is not None and staff.active and staff.totp_secret_enc:
                step = totp_step(pii.decrypt(staff.totp_secret_enc, context=TOTP_CONTEXT), code, now)
                if step is not None and staff.totp_last_step is not None and step <= staff.totp_last_step:
                    step = None  # a code already used (replayed, or read over the shoulder) is refused
            if staff is not None and staff.active and ok and step is not None:
                staff.totp_last_step = step
                locks[user_key].failures, locks[user_key].locked_until = 0, None
                locks[user_key].updated_at = now
                session.add(ConsoleSession(token_hash=_token_hash(token), staff_id=staff.id, last_seen_at=now,
                                           expires_at=now + ABSOLUTE_TIMEOUT, ip=ip, created_at=now))
                audit.record(session, actor_kind="staff", actor_id=staff.id, action="console.sign_in", at=now,
                             ip=ip, target_kind="staff", target_id=staff.id, details={"username": staff.username})
            else:
                reason = ("unknown_user" if staff is None else "inactive" if not staff.active
                          else "password" if not ok else "no_totp" if not staff.totp_secret_enc else "totp")
                newly_locked = []
                for row in locks.values():
                    row.failures += 1
                    row.updated_at = now
                    wait = backoff_seconds(row.failures)
                    if wait:
                        row.locked_until = now + timedelta(seconds=wait)
                        newly_locked.append({"key": row.key.split(":")[0], "failures": row.failures,
                                             "seconds": wait})
                audit.record(session, actor_kind="staff", actor_id=staff.id if staff else None,
                             action="console.sign_in_failed", at=now, ip=ip,
                             details={**who_tried, "reason": reason})
                for lock in newly_locked:
                    audit.record(session, actor_kind="staff", actor_id=staff.id if staff else None,
                                 action="console.lockout", at=now, ip=ip,
                                 details={**who_tried, **lock})
                failure = errors.SignInFailed()
    if failure is not None:
        raise failure
    return token


def current_user(session: Session, token: str | None, *, now: datetime, ip: str | None = None) -> ConsoleUser:
    """The staff member of a session cookie; ends (and refuses) it after 15 idle minutes or 8 hours."""
    if not token:
        raise errors.Unauthenticated()
    ended: str | None = None
    with session.begin():
        row = session.execute(
            select(ConsoleSession, StaffUser).join(StaffUser, StaffUser.id == ConsoleSession.staff_id)
            .where(ConsoleSession.token_hash == _token_hash(token)).with_for_update(of=ConsoleSession)
        ).first()
        if row is None or row.ConsoleSession.ended_at is not None:
            raise errors.Unauthenticated()
        console_session, staff = row.ConsoleSession, row.StaffUser
        if not staff.active:
            ended = "inactive"
        elif now >= console_session.expires_at:
            ended = "absolute"
        elif now - console_session.last_seen_at >= IDLE_TIMEOUT:
            ended = "idle"
        if ended:
            console_session.ended_at, console_session.end_reason = now, ended
            audit.record(session, actor_kind="staff", actor_id=staff.id, action="console.session_expired", at=now,
                         ip=ip, target_kind="console_session", target_id=console_session.id,
                         details={"reason": ended})
        else:
            console_session.last_seen_at = now
            user = ConsoleUser(id=staff.id, username=staff.username, role=staff.role,
                               session_id=console_session.id)
    if ended:
        raise errors.SessionExpired(details={"reason": ended})
    return user


def sign_out(session: Session, token: str | None, *, now: datetime, ip: str | None = None) -> None:
    """End the session of this cookie (nothing happens for an unknown or ended one)."""
    if not token:
        return
    with session.begin():
        found = session.scalar(select(ConsoleSession).where(ConsoleSession.token_hash == _token_hash(token),
                                                            ConsoleSession.ended_at.is_(None)).with_for_update())
        if found is not None:
            found.ended_at, found.end_reason = now, "logout"
            audit.record(session, actor_kind="staff", actor_id=found.staff_id, action="console.sign_out", at=now,
                         ip=ip, target_kind="console_session", target_id=found.id)


def _end_sessions(session: Session, staff_id: int, now: datetime, reason: str, keep: int | None = None) -> None:
    query = update(ConsoleSession).where(ConsoleSession.staff_id == staff_id, ConsoleSession.ended_at.is_(None))
    if keep is not None:
        query = query.where(ConsoleSession.id != keep)
    session.execute(query.values(ended_at=now, end_reason=reason))


_SIGNED_IN_CHECKS_FAILED = ("console.password_change_failed", "console.totp_enrol_failed")


def _signed_in_check_failed(session: Session, staff_id: int, action: str, now: datetime, ip: str | None) -> None:
    """Record a failed password check of a signed-in form. A session that keeps failing it (a stolen
    session guessing the password) is ended, with every other session of that staff member, after
    ``MAX_FAILURES`` within ``IDLE_TIMEOUT``: signing in again goes through the lock-out of ``sign_in``."""
    audit.record(session, actor_kind="staff", actor_id=staff_id, action=action, at=now, ip=ip,
                 target_kind="staff", target_id=staff_id)
    session.flush()
    failures = session.scalar(select(func.count()).select_from(AuditEvent).where(
        AuditEvent.actor_kind == "staff", AuditEvent.actor_id == staff_id,
        AuditEvent.action.in_(_SIGNED_IN_CHECKS_FAILED), AuditEvent.created_at > now - IDLE_TIMEOUT))
    if failures >= MAX_FAILURES:
        _end_sessions(session, staff_id, now, "guessing")  # end_reason is at most 16 characters


def _rotate_session(session: Session, user: ConsoleUser) -> str:
    """Give the signed-in session a new random id (same row, same absolute end) and return it.
    After a credential change the id the browser held before is worth nothing: a copy of that
    cookie (the usual reason to change a password) does not outlive the change."""
    token = secrets.token_urlsafe(32)
    session.execute(update(ConsoleSession).where(ConsoleSession.id == user.session_id)
                    .values(token_hash=_token_hash(token)))
    return token


def change_password(session: Session, *, user: ConsoleUser, current_password: str, new_password: str,
                    now: datetime, ip: str | None = None) -> str:
    """The signed-in staff member changes their password; their other sessions end, and this one
    gets a new id, returned for the cookie."""
    failed = False
    with session.begin():
        staff = session.scalar(select(StaffUser).where(StaffUser.id == user.id).with_for_update())
        assert staff is not None
        if not _password_ok(staff.password_hash, current_password):
            failed = True
            _signed_in_check_failed(session, staff.id, "console.password_change_failed", now, ip)
        else:
            check_password_rules(new_password, staff.username)
            staff.password_hash, staff.password_changed_at = hash_password(new_password), now
            _end_sessions(session, staff.id, now, "password", keep=user.session_id)
            token = _rotate_session(session, user)
            audit.record(session, actor_kind="staff", actor_id=staff.id, action="console.password_change", at=now,
                         ip=ip, target_kind="staff", target_id=staff.id)
    if failed:
        raise errors.SignInFailed("The current password is wrong.")
    return token


def enrol_totp(session: Session, pii: PiiCipher, *, user: ConsoleUser, password: str, secret: str, code: str,
               now: datetime, ip: str | None = None) -> str:
    """Replace the signed-in staff member's TOTP secret with ``secret`` once they prove they hold it
    (a code from it) and know their password. As a password change: their other sessions (opened
    with the old secret) end, and this one gets a new id, returned for the cookie."""
    failed = False
    with session.begin():
        staff = session.scalar(select(StaffUser).where(StaffUser.id == user.id).with_for_update())
        assert staff is not None
        step = totp_step(secret, code, now)
        if not _password_ok(staff.password_hash, password) or step is None:
            failed = True
            _signed_in_check_failed(session, staff.id, "console.totp_enrol_failed", now, ip)
        else:
            staff.totp_secret_enc = pii.encrypt(secret, context=TOTP_CONTEXT)
            staff.totp_last_step = step
            _end_sessions(session, staff.id, now, "totp", keep=user.session_id)
            token = _rotate_session(session, user)
            audit.record(session, actor_kind="staff", actor_id=staff.id, action="console.totp_enrol", at=now,
                         ip=ip, target_kind="staff", target_id=staff.id)
    if failed:
        raise errors.SignInFailed("The password or the one-time code is wrong.")
    return token
