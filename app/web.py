"""What blueprints share: the request's session, the authenticated principal, rate limits.

Blueprints stay thin: they take their session and principal from here, call one service,
and return its result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import current_app, g, request
from sqlalchemy import Select
from sqlalchemy.orm import Session

from app import errors
from app.extensions import db
from app.services.auth import Principal, authenticate, authenticate_alone, resolve_token

F = TypeVar("F", bound=Callable[..., Any])


def session() -> Session:
    return db.request_session()


def read_session() -> Session:
    """A record read's session: the streaming replica when that is safe (app/replica.py), else ``session()``."""
    from app.replica import read_session as routed

    return routed()


def domain() -> Any:
    """The domain singletons built at start-up (``app.wiring.Domain``)."""
    return current_app.extensions["domain"]


def now() -> datetime:
    return datetime.now(UTC)


def client_ip() -> str:
    return request.remote_addr or "unknown"


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def principal() -> Principal:
    """The authenticated principal of this request (set by ``user_required``/``staff_required``)."""
    return g.principal


def _authenticate(query: Select[Any] | None = None, alone: bool = False) -> Principal:
    token = _bearer()
    if token is None:
        raise errors.Unauthenticated()
    request_session = session()
    begin_envelope = getattr(request_session, "begin_envelope", None)
    if alone and query is not None and (engine := request_session.get_bind()).dialect.name == "postgresql":
        # A view that reads nothing but its token look-up (``user_required_with(..., alone=True)``):
        # one statement, no transaction around it (on SQLite a transaction is as cheap: as it was).
        found = authenticate_alone(engine, token, now(), query)
    elif begin_envelope is not None and begin_envelope():
        # The look-up runs in a transaction the use case takes over (one commit per request).
        found = resolve_token(request_session, token, now(), query)
    else:
        found = authenticate(request_session, token, now(), query)
    g.principal = found
    g.actor_label = f"{found.kind}:{found.id}"
    return found


def signed_in(fn: F) -> F:
    """Any signed-in caller, user or staff (what each may do is decided by the service)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _authenticate()
        return fn(*args, **kwargs)

    wrapper.api_auth = ("signed_in", ())  # type: ignore[attr-defined]  # read by app/openapi.py
    return wrapper  # type: ignore[return-value]


def user_required(fn: F) -> F:
    """The caller must be a signed-in mini-program user (staff tokens are refused with 403)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _authenticate().kind != "user":
            raise errors.Forbidden("This endpoint is for mini-program users.")
        return fn(*args, **kwargs)

    wrapper.api_auth = ("user", ())  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def user_required_with(query: Select[Any], *, alone: bool = False) -> Callable[[F], F]:
    """``user_required`` whose token look-up is ``query`` (an ``app.services.auth.user_by_token(...)``):
    it reads the view's facts about the caller in the same statement as the token, and the view
    finds them in ``principal().facts``. Same refusals as ``user_required``.

    ``alone=True``: the view reads nothing else and writes nothing (``GET /me``) — on PostgreSQL the
    look-up then runs on its own connection in autocommit, outside the request's session (no BEGIN,
    no ROLLBACK). Never for a view that moves money or writes: its facts would be read outside the
    transaction that acts on them. Without it the look-up opens the request's transaction, which
    the use case takes over, as ``user_required``'s does."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _authenticate(query, alone=alone).kind != "user":
                raise errors.Forbidden("This endpoint is for mini-program users.")
            return fn(*args, **kwargs)

        wrapper.api_auth = ("user", ())  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def staff_required(*roles: str) -> Callable[[F], F]:
    """The caller must be staff with one of ``roles`` (a user token gets 403)."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            found = _authenticate()
            if found.kind != "staff":
                raise errors.Forbidden("This endpoint is for service-window staff.")
            if roles and found.role not in roles:
                raise errors.Forbidden("This needs the role {roles}.", params={"roles": " or ".join(roles)})
            return fn(*args, **kwargs)

        wrapper.api_auth = ("staff", roles)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator


def rate_limited(group: str) -> Callable[[F], F]:
    """Per-user and per-IP limits for an endpoint group (R19). Put it under the auth decorator
    so the user is known; on anonymous endpoints only the IP counts."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            limiter = current_app.extensions["ratelimiter"]
            found = g.get("principal")
            wait = limiter.hit(group, f"{found.kind}:{found.id}" if found else None, client_ip())
            if wait is not None:
                raise errors.RateLimited(details={"retry_after": wait, "group": group})
            return fn(*args, **kwargs)

        wrapper.api_rate_limited = group  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorator
