"""Sign-in from WeChat and Alipay, rotating refresh tokens with reuse detection, logout.

Tokens are opaque random strings; only their SHA-256 is stored. An access token and the refresh
tokens it was issued with share a ``chain_id``: rotating keeps the chain, reusing an already
rotated refresh token revokes the whole chain (a stolen token is then useless to both parties),
and logout revokes the chain too.

Sign-in and the bearer-token look-up are hot paths (issue 13): their statements are Core, built
once at import, and run on the transaction's connection (no ORM loads or flushes). On PostgreSQL a
sign-in is ONE statement (a data-modifying CTE: the user found and updated or created, the audit
row, the two tokens); SQLite runs the same steps one statement each.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Select,
    String,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import errors, hot_sql
from app.request_context import current_request_id
from app.services import audit
from models import AuthToken, StaffUser, User
from models.base import UTCDateTime

_tokens, _users, _staff = AuthToken.__table__, User.__table__, StaffUser.__table__


@dataclass(frozen=True)
class Principal:
    """Who is calling: a mini-program user or a staff member."""

    kind: str  # user | staff
    id: int
    person_id: int | None = None
    channel: str | None = None
    role: str | None = None
    chain_id: str | None = None
    # The row of the token look-up: with ``user_by_token(...)`` it carries the view's own facts,
    # read in the same statement as the token (``app.web.user_required_with``).
    facts: Any = field(default=None, compare=False, repr=False)


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


def _new_pair(settings: TokenSettings, now: datetime, chain_id: str) -> tuple[str, str, dict[str, Any]]:
    """A fresh access and refresh token and the parameters that store their hashes."""
    access = "at_" + secrets.token_urlsafe(32)
    refresh = "rt_" + secrets.token_urlsafe(32)
    return access, refresh, {
        "chain_id": chain_id, "now": now,
        "access_hash": token_hash(access), "access_expires_at": now + timedelta(seconds=settings.access_ttl_seconds),
        "refresh_hash": token_hash(refresh),
        "refresh_expires_at": now + timedelta(seconds=settings.refresh_ttl_seconds),
    }


def _token_rows(user_id: int, pair: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"kind": kind, "token_hash": pair[f"{kind}_hash"], "user_id": user_id, "chain_id": pair["chain_id"],
             "expires_at": pair[f"{kind}_expires_at"], "created_at": pair["now"]} for kind in ("access", "refresh")]


def _pair_response(access: str, refresh: str, settings: TokenSettings, user_id: int, channel: str,
                   person_id: int | None) -> dict[str, Any]:
    return {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": settings.access_ttl_seconds,
        "user": {"id": user_id, "channel": channel, "verified": person_id is not None},
    }


def _issue_pair(session: Session, user_id: int, channel: str, person_id: int | None, settings: TokenSettings,
                now: datetime, chain_id: str | None = None) -> dict[str, Any]:
    access, refresh, pair = _new_pair(settings, now, chain_id or secrets.token_hex(16))
    session.connection().execute(_INSERT_TOKEN, _token_rows(user_id, pair))
    return _pair_response(access, refresh, settings, user_id, channel, person_id)


def _param(name: str) -> Any:
    # Named apart from the columns: a parameter named like a column of an UPDATE or an INSERT
    # would be taken as a value for that column.
    return bindparam(f"new_{name}", type_=_users.c[name].type)


def _fill(name: str) -> Any:
    """The column's value after a sign-in: the platform's value only if the column is empty and no
    other user holds that value (a unique key: taking it would fail, or move an identity)."""
    holder = _users.alias(f"{name}_holder")
    return case((and_(_users.c[name].is_(None), ~exists(select(holder.c.id).where(holder.c[name] == _param(name)))),
                 _param(name)), else_=_users.c[name])


@dataclass(frozen=True)
class _SignInStatements:
    """The statements of one way to find a platform identity's user (``key``): ``set`` columns take
    the platform's values, ``kept`` columns keep the stored value when the platform gives none."""

    channel: str
    key: str
    find: Any  # SQLite: the user, then an update or an insert, the audit row, the tokens
    update: Any
    create: Any
    all_in_one: Any  # PostgreSQL: everything in one data-modifying CTE

    @classmethod
    def build(cls, channel: str, key: str, replaced: tuple[str, ...] = (), kept: tuple[str, ...] = (),
              filled: tuple[str, ...] = ()) -> _SignInStatements:
        """``key`` finds the user; with ``filled`` columns, the user is the one holding any of
        ``key`` and ``filled`` (``key``'s holder first), and each of these columns takes the
        platform's value only while empty and while no other user holds that value."""
        now = bindparam("now", type_=UTCDateTime())
        changes = {**{name: _param(name) for name in replaced},
                   **{name: func.coalesce(_param(name), _users.c[name]) for name in kept if name != key},
                   **{name: _fill(name) for name in ((key, *filled) if filled else ())}, "last_login_at": now}
        new = dict.fromkeys((key, *replaced, *kept, *filled))
        who = (_users.c.id, _users.c.channel, _users.c.person_id)
        target = _users.c[key] == _param(key)
        if filled:
            target = _users.c.id == (
                select(_users.c.id).where(or_(target, *(_users.c[name] == _param(name) for name in filled)))
                .order_by(case((target, 0), else_=1), _users.c.id).limit(1).scalar_subquery())
        find = select(*who).where(target)
        update_ = update(_users).where(_users.c.id == bindparam("user_id")).values(changes)
        create = (insert(_users).values({"channel": channel, **{name: _param(name) for name in new},
                                         "last_login_at": now, "created_at": now}).returning(*who))
        # PostgreSQL: update the user if they exist, else create them (a racing first sign-in of
        # the same identity fails on the unique key and is retried: it then finds the winner's row).
        found = (update(_users).where(target).values(changes)
                 .returning(*who, false().label("created")).cte("found"))
        made = (insert(_users).from_select(
            ["channel", *new, "last_login_at", "created_at"],
            select(literal(channel, String), *(_param(name) for name in new), now, now)
            .where(~exists(select(found.c.id))))
            .returning(*who, true().label("created")).cte("made"))
        user = union_all(select(found), select(made)).cte("signed_in")
        a = audit.TABLE
        audit_row = insert(a).from_select(
            ["actor_kind", "actor_id", "action", "details", "request_id", "ip", "created_at"],
            select(literal("user", String), user.c.id, literal("auth.sign_in", String),
                   func.jsonb_build_object(literal("channel", String), literal(channel, String),
                                           literal("new_user", String), user.c.created),
                   bindparam("request_id", type_=a.c.request_id.type), bindparam("ip", type_=a.c.ip.type), now),
        ).cte("audit_row")
        tokens = [insert(_tokens).from_select(
            ["kind", "token_hash", "user_id", "chain_id", "expires_at", "created_at"],
            select(literal(kind, String), bindparam(f"{kind}_hash", type_=_tokens.c.token_hash.type), user.c.id,
                   bindparam("chain_id", type_=_tokens.c.chain_id.type),
                   bindparam(f"{kind}_expires_at", type_=UTCDateTime()), now),
        ).cte(f"{kind}_token") for kind in ("access", "refresh")]
        all_in_one = select(user.c.id, user.c.channel, user.c.person_id).add_cte(audit_row, *tokens)
        return cls(channel, key, find, update_, create, all_in_one)


_INSERT_TOKEN = insert(_tokens)
_WECHAT = _SignInStatements.build("wechat", "wechat_openid", replaced=("wechat_session_key_enc",),
                                  kept=("wechat_unionid",))
# One user per Alipay person, known by user_id, open_id or both: a reply that carries both finds the
# user holding either (the user_id's first) and fills in the one it lacked.
_ALIPAY_BY_USER_ID = _SignInStatements.build("alipay", "alipay_user_id", filled=("alipay_open_id",))
_ALIPAY_BY_OPEN_ID = _SignInStatements.build("alipay", "alipay_open_id", filled=("alipay_user_id",))


def _sign_in(session: Session, how: _SignInStatements, fields: dict[str, Any], settings: TokenSettings,
             now: datetime, ip: str | None) -> dict[str, Any]:
    """Find the platform identity's user (``fields[how.key]``) or create them, record the sign-in
    with its audit row and issue a token pair: one transaction."""
    access, refresh, pair = _new_pair(settings, now, secrets.token_hex(16))
    new = {f"new_{name}": value for name, value in fields.items()}
    # Two first sign-ins of the same platform identity may race to create the user; the
    # unique constraint lets one win, and the other signs in to the winner's row.
    for attempt in (1, 2):
        try:
            with session.begin():
                connection = session.connection()
                if connection.dialect.name == "postgresql":
                    user_id, channel, person_id = connection.execute(how.all_in_one, {
                        **new, **pair, "request_id": current_request_id.get(), "ip": ip}).one()
                else:
                    found = connection.execute(how.find, new).first()
                    if found is None:
                        user_id, channel, person_id = connection.execute(how.create, {**new, "now": now}).one()
                    else:
                        user_id, channel, person_id = found
                        connection.execute(how.update, {**new, "now": now, "user_id": user_id})
                    connection.execute(audit.INSERT, audit.values(
                        actor_kind="user", actor_id=user_id, action="auth.sign_in", at=now,
                        details={"channel": how.channel, "new_user": found is None}, ip=ip))
                    connection.execute(_INSERT_TOKEN, _token_rows(user_id, pair))
            return _pair_response(access, refresh, settings, user_id, channel, person_id)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def sign_in_with_wechat(session: Session, wechat: Any, pii: Any, code: str, settings: TokenSettings,
                        now: datetime, ip: str | None = None) -> dict[str, Any]:
    """Exchange a ``wx.login`` code (code2Session) for our tokens. The session_key stays here."""
    # The platform call happens before the transaction: no row lock is held across the network.
    found = wechat.code_to_session(code)
    return _sign_in(session, _WECHAT, {
        "wechat_openid": found.openid, "wechat_unionid": found.unionid,
        "wechat_session_key_enc": pii.encrypt(found.session_key, context="user.wechat_session_key")},
        settings, now, ip)


def sign_in_with_alipay(session: Session, alipay: Any, auth_code: str, settings: TokenSettings,
                        now: datetime, ip: str | None = None) -> dict[str, Any]:
    """Exchange a ``my.getAuthCode`` code (alipay.system.oauth.token) for our tokens."""
    found = alipay.exchange_auth_code(auth_code)
    how = _ALIPAY_BY_USER_ID if found.user_id else _ALIPAY_BY_OPEN_ID
    return _sign_in(session, how, {"alipay_user_id": found.user_id or None, "alipay_open_id": found.open_id or None},
                    settings, now, ip)


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
            result = _issue_pair(session, user.id, user.channel, user.person_id, settings, now, chain_id=row.chain_id)
    if reused:
        raise errors.Unauthenticated("The refresh token was already used; you have been signed out.")
    return result


def logout(session: Session, caller: Principal, now: datetime) -> None:
    """Revoke the caller's access token and its whole refresh chain."""
    with session.begin():
        if caller.chain_id:
            _revoke_chain(session, caller.chain_id, now)
        audit.record(session, actor_kind="user", actor_id=caller.id, action="auth.logout", at=now)


def user_by_token(*columns: Any, join: Any = None) -> Select[Any]:
    """The bearer-token look-up of a user, reading ``columns`` of the caller's own facts in the same
    statement (``join`` extends the FROM, e.g. with outer joins to the user's person). The token
    conditions are always the same: an unrevoked, unexpired access token."""
    source = _tokens.join(_users, _users.c.id == _tokens.c.user_id)
    return (
        select(_tokens.c.user_id, _tokens.c.chain_id, _users.c.person_id, _users.c.channel, *columns)
        .select_from(join(source) if join is not None else source)
        .where(_tokens.c.token_hash == bindparam("token_hash"), _tokens.c.kind == "access",
               _tokens.c.revoked_at.is_(None), _tokens.c.expires_at > bindparam("now", type_=UTCDateTime()))
    )


def authenticate(session: Session, token: str, now: datetime, query: Select[Any] | None = None) -> Principal:
    """Resolve a bearer token to its principal, or raise ``Unauthenticated``."""
    with session.begin():
        return resolve_token(session, token, now, query)


def authenticate_alone(engine: Engine, token: str, now: datetime, query: Select[Any]) -> Principal:
    """``authenticate`` for a view that reads nothing but what ``query`` reads with the token
    (``GET /me``): the one statement runs in autocommit — PostgreSQL makes it a transaction of its
    own, with one snapshot — so no ``BEGIN`` goes before it and no ``ROLLBACK`` after it: two round
    trips of three (issue 13)."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection, connection.begin():
        return _resolve(connection, token, now, query)


def resolve_token(session: Session, token: str, now: datetime, query: Select[Any] | None = None) -> Principal:
    """``authenticate`` inside a transaction the caller opened (the request envelope's, which the
    use case then commits: one transaction per request). ``query``: a ``user_by_token(...)`` that
    also reads the view's facts (``Principal.facts``); a staff token never reads them."""
    return _resolve(session.connection(), token, now, query)


def _resolve(connection: Connection, token: str, now: datetime, query: Select[Any] | None) -> Principal:
    hashed = token_hash(token)
    if token.startswith("st_"):
        staff = hot_sql.execute(connection, _STAFF_BY_TOKEN, {"token_hash": hashed, "now": now}).first()
        if staff is not None:
            return Principal(kind="staff", id=staff.id, role=staff.role)
    elif token.startswith("at_"):
        row = hot_sql.execute(connection, query if query is not None else _USER_BY_TOKEN,
                              {"token_hash": hashed, "now": now}).first()
        if row is not None:
            return Principal(kind="user", id=row.user_id, person_id=row.person_id, channel=row.channel,
                             chain_id=row.chain_id, facts=row)
    raise errors.Unauthenticated("The access token is missing, expired or revoked.")


# Built once: the look-up runs on every signed-in request (Core on the tables: no ORM layer).
_STAFF_BY_TOKEN = select(_staff.c.id, _staff.c.role).where(
    _staff.c.token_hash == bindparam("token_hash"), _staff.c.active, _staff.c.token_revoked_at.is_(None),
    _staff.c.token_expires_at > bindparam("now", type_=UTCDateTime()))
_USER_BY_TOKEN = user_by_token()
