"""Sign-in from WeChat and Alipay, rotating refresh tokens with reuse detection, logout.

Tokens are opaque random strings; only their SHA-256 is stored. An access token and the refresh
tokens it was issued with share a ``chain_id``: rotating keeps the chain, reusing an already
rotated refresh token revokes the whole chain (a stolen token is then useless to both parties),
and logout revokes the chain too.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import errors
from app.services import audit
from models import AuthToken, StaffUser, User
from models.base import UTCDateTime


@dataclass(frozen=True)
class Principal:
    """Who is calling: a mini-program user or a staff member."""

    kind: str  # user | staff
    id: int
    person_id: int | None = None
    channel: str | None = None
    role: str | None = None
    chain_id: str | None = None


@dataclass(frozen=True)
class TokenSettings:
    access_ttl_seconds: int = 7200
    refresh_ttl_seconds: int = 30 * 24 * 3600


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_staff_token() -> tuple[str, str]:
    """A staff API token and its stored hash."""
    token = "st_" + secrets.token_urlsafe(32)
    return token, token_hash(token)


def _issue_pair(session: Session, user: User, settings: TokenSettings, now: datetime,
                chain_id: str | None = None) -> dict[str, Any]:
    chain_id = chain_id or secrets.token_hex(16)
    access = "at_" + secrets.token_urlsafe(32)
    refresh = "rt_" + secrets.token_urlsafe(32)
    session.add_all([
        AuthToken(kind="access", token_hash=token_hash(access), user_id=user.id, chain_id=chain_id,
                  expires_at=now + timedelta(seconds=settings.access_ttl_seconds), created_at=now),
        AuthToken(kind="refresh", token_hash=token_hash(refresh), user_id=user.id, chain_id=chain_id,
                  expires_at=now + timedelta(seconds=settings.refresh_ttl_seconds), created_at=now),
    ])
    return {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": settings.access_ttl_seconds,
        "user": {"id": user.id, "channel": user.channel, "verified": user.person_id is not None},
    }


def _sign_in(session: Session, channel: str, lookup: Any, fill: Any, settings: TokenSettings,
             now: datetime, ip: str | None) -> dict[str, Any]:
    # Two first sign-ins of the same platform identity may race to create the user; the
    # unique constraint lets one win, and the other signs in to the winner's row.
    for attempt in (1, 2):
        try:
            with session.begin():
                user = session.scalar(select(User).where(lookup))
                created = user is None
                if user is None:
                    user = User(channel=channel, created_at=now)
                    session.add(user)
                fill(user)
                user.last_login_at = now
                session.flush()
                audit.record(session, actor_kind="user", actor_id=user.id, action="auth.sign_in", at=now,
                             details={"channel": channel, "new_user": created}, ip=ip)
                return _issue_pair(session, user, settings, now)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def sign_in_with_wechat(session: Session, wechat: Any, pii: Any, code: str, settings: TokenSettings,
                        now: datetime, ip: str | None = None) -> dict[str, Any]:
    """Exchange a ``wx.login`` code (code2Session) for our tokens. The session_key stays here."""
    # The platform call happens before the transaction: no row lock is held across the network.
    found = wechat.code_to_session(code)

    def fill(user: User) -> None:
        user.wechat_openid = found.openid
        user.wechat_unionid = found.unionid or user.wechat_unionid
        user.wechat_session_key_enc = pii.encrypt(found.session_key, context="user.wechat_session_key")

    return _sign_in(session, "wechat", User.wechat_openid == found.openid, fill, settings, now, ip)


def sign_in_with_alipay(session: Session, alipay: Any, auth_code: str, settings: TokenSettings,
                        now: datetime, ip: str | None = None) -> dict[str, Any]:
    """Exchange a ``my.getAuthCode`` code (alipay.system.oauth.token) for our tokens."""
    found = alipay.exchange_auth_code(auth_code)
    lookup = (User.alipay_user_id == found.user_id) if found.user_id else (User.alipay_open_id == found.open_id)

    def fill(user: User) -> None:
        user.alipay_user_id = found.user_id or user.alipay_user_id
        user.alipay_open_id = found.open_id or user.alipay_open_id

    return _sign_in(session, "alipay", lookup, fill, settings, now, ip)


def _revoke_chain(session: Session, chain_id: str, now: datetime) -> None:
    session.execute(
        update(AuthToken).where(AuthToken.chain_id == chain_id, AuthToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


def refresh_tokens(session: Session, refresh_token: str, settings: TokenSettings, now: datetime,
                   ip: str | None = None) -> dict[str, Any]:
    """Rotate a refresh token. Reusing a rotated one revokes its whole chain."""
    reused = False
    with session.begin():
        row = session.scalar(
            select(AuthToken).where(AuthToken.token_hash == token_hash(refresh_token), AuthToken.kind == "refresh")
            .with_for_update()
        )
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            raise errors.Unauthenticated("The refresh token is not valid.")
        if row.used_at is not None:
            reused = True
            _revoke_chain(session, row.chain_id, now)
            audit.record(session, actor_kind="user", actor_id=row.user_id, action="auth.refresh_reuse",
                         at=now, details={"chain": row.chain_id}, ip=ip)
        else:
            row.used_at = now
            user = session.get_one(User, row.user_id)
            result = _issue_pair(session, user, settings, now, chain_id=row.chain_id)
    if reused:
        raise errors.Unauthenticated("The refresh token was already used; you have been signed out.")
    return result


def logout(session: Session, caller: Principal, now: datetime) -> None:
    """Revoke the caller's access token and its whole refresh chain."""
    with session.begin():
        if caller.chain_id:
            _revoke_chain(session, caller.chain_id, now)
        audit.record(session, actor_kind="user", actor_id=caller.id, action="auth.logout", at=now)


def authenticate(session: Session, token: str, now: datetime) -> Principal:
    """Resolve a bearer token to its principal, or raise ``Unauthenticated``."""
    with session.begin():
        return resolve_token(session, token, now)


def resolve_token(session: Session, token: str, now: datetime) -> Principal:
    """``authenticate`` inside a transaction the caller opened (the request envelope's, which the
    use case then commits: one transaction per request)."""
    hashed = token_hash(token)
    if token.startswith("st_"):
        staff = session.execute(_STAFF_BY_TOKEN, {"token_hash": hashed, "now": now}).first()
        if staff is not None:
            return Principal(kind="staff", id=staff.id, role=staff.role)
    elif token.startswith("at_"):
        row = session.execute(_USER_BY_TOKEN, {"token_hash": hashed, "now": now}).first()
        if row is not None:
            return Principal(kind="user", id=row.user_id, person_id=row.person_id, channel=row.channel,
                             chain_id=row.chain_id)
    raise errors.Unauthenticated("The access token is missing, expired or revoked.")


# Built once: the look-up runs on every signed-in request.
_STAFF_BY_TOKEN = select(StaffUser.id, StaffUser.role).where(
    StaffUser.token_hash == bindparam("token_hash"), StaffUser.active, StaffUser.token_revoked_at.is_(None),
    StaffUser.token_expires_at > bindparam("now", type_=UTCDateTime()))
_USER_BY_TOKEN = (
    select(AuthToken.user_id, AuthToken.chain_id, User.person_id, User.channel)
    .join(User, User.id == AuthToken.user_id)
    .where(AuthToken.token_hash == bindparam("token_hash"), AuthToken.kind == "access",
           AuthToken.revoked_at.is_(None), AuthToken.expires_at > bindparam("now", type_=UTCDateTime()))
)
