"""Authenticating designated institutions' server-to-server requests (SPEC §5).

Each request carries ``X-Inst-Code``, ``X-Timestamp``, ``X-Nonce`` and ``X-Signature`` (HMAC-SHA256
with the institution's secret over method, path + query, timestamp, nonce and the SHA-256 of the
exact body bytes; ``app.security.request_signing``). The order of checks is: the institution is
known, the signature is right (constant time), the timestamp is within the window, and only then
is the nonce recorded — so a forged request can neither burn a nonce nor learn the server clock.

Secrets are stored encrypted (``institutions.api_secret_enc``). Decrypting one and reading the
institution on every request would be wasted work on the hot path, so each process keeps the
decrypted secret for ``INSTITUTION_CACHE_SECONDS`` (default 30): a secret or designation changed
by ``load-registry`` takes effect within that time. A signature that fails against a cached secret
older than a second is checked once more against the database, so a new secret works at once.

Nonces are kept for twice the window (the span of timestamps that can be accepted): in Redis with
``SET NX EX`` when it is configured, in the ``institution_nonces`` table otherwise. If Redis is
configured but down, requests fail with 503 rather than fall back and let a nonce be used twice.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from flask import current_app, g, request
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app import errors
from app.security.pii import PiiCipher
from app.security.request_signing import verify_signature
from app.services.ledger import existing_clearing_account_ids
from app.web import now, session
from models import Institution, InstitutionNonce

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

_CODE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_NONCE = re.compile(r"[\x21-\x7e]{8,64}")  # visible ASCII: UUIDs, hex, base64url all fit
_HEADERS = ("X-Inst-Code", "X-Timestamp", "X-Nonce", "X-Signature")
_RECHECK_AFTER_SECONDS = 1.0
_MAX_CACHED = 10_000
_PURGE_EVERY = 500  # DB nonce store: delete expired rows once every this many requests per process


@dataclass(frozen=True)
class InstitutionIdentity:
    """The authenticated institution, as the settlement path needs it."""

    id: int
    code: str
    name: str
    kind: str
    region_code: str
    designated: bool
    active: bool
    clearing_account_ids: tuple[int, ...]  # by shard; empty until created (registry load, or a first settlement)


@dataclass(frozen=True)
class _Cached:
    identity: InstitutionIdentity | None  # None: no such institution (cached too, briefly)
    secret: str | None
    loaded_at: float


class InstitutionAuthenticator:
    """Verifies signed institution requests; one per app, shared by the threads of a process."""

    def __init__(self, pii: PiiCipher, redis: Any | None, window_seconds: int, cache_seconds: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pii = pii
        self.redis = redis
        self.window_seconds = window_seconds
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._requests = itertools.count(1)

    def clear(self) -> None:
        """Forget every cached secret (tests, or an operator who just rotated one)."""
        with self._lock:
            self._cache.clear()

    def authenticate(self, session: Session, headers: Mapping[str, str], method: str, path_with_query: str,
                     body: bytes, now: datetime) -> InstitutionIdentity:
        """Return the institution that signed this request, or raise a 401 (503 if Redis is down)."""
        code, timestamp, nonce, signature = (headers.get(name) or "" for name in _HEADERS)
        missing = [name for name in _HEADERS if not headers.get(name)]
        if missing:
            raise errors.SignatureInvalid("Signed institution headers are missing.", details={"missing": missing})
        if not _CODE.fullmatch(code):
            raise errors.SignatureInvalid()
        if not _NONCE.fullmatch(nonce):
            raise errors.SignatureInvalid("X-Nonce must be 8 to 64 visible ASCII characters.")
        cached = self._lookup(session, code, fresh=False)

        def verify(entry: _Cached) -> None:
            if entry.identity is None or entry.secret is None:
                # Unknown institution: the same answer as a wrong signature.
                raise errors.SignatureInvalid()
            verify_signature(entry.secret, signature, method, path_with_query, timestamp, nonce, body,
                             now_unix=int(now.timestamp()), window=self.window_seconds)

        try:
            verify(cached)
        except errors.SignatureInvalid:
            if self.clock() - cached.loaded_at < _RECHECK_AFTER_SECONDS:
                raise
            cached = self._lookup(session, code, fresh=True)
            verify(cached)
        assert cached.identity is not None
        self._use_nonce(session, cached.identity.id, nonce, now)
        return cached.identity

    def _lookup(self, session: Session, code: str, *, fresh: bool) -> _Cached:
        entry = self._cache.get(code)
        if not fresh and entry is not None and self.clock() - entry.loaded_at < self.cache_seconds:
            return entry
        with session.begin():
            row = session.execute(
                select(Institution.id, Institution.code, Institution.name, Institution.kind,
                       Institution.region_code, Institution.designated, Institution.active,
                       Institution.api_secret_enc)
                .where(Institution.code == code)
            ).first()
            clearing = () if row is None else existing_clearing_account_ids(session, row.id)
        if row is None:
            entry = _Cached(None, None, self.clock())
        else:
            identity = InstitutionIdentity(row.id, row.code, row.name, row.kind, row.region_code, row.designated,
                                           row.active, clearing)
            secret = self.pii.decrypt(row.api_secret_enc, context="institution.api_secret")
            entry = _Cached(identity, secret, self.clock())
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[code] = entry
        return entry

    def _use_nonce(self, session: Session, institution_id: int, nonce: str, now: datetime) -> None:
        keep_seconds = 2 * self.window_seconds
        if self.redis is not None:
            try:
                fresh = self.redis.set(f"copay:inst-nonce:{institution_id}:{nonce}", b"1", nx=True, ex=keep_seconds)
            except Exception as exc:  # noqa: BLE001 — any Redis failure: fail closed, never reuse a nonce
                log.error("nonce store unavailable: %s", type(exc).__name__)
                raise errors.UpstreamUnavailable("The request cannot be checked right now; try again.",
                                                 details={"unavailable": "nonce_store", "retry_after": 2}) from None
            if not fresh:
                raise errors.NonceReused()
            return
        table = InstitutionNonce.__table__
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = insert(table).values(institution_id=institution_id, nonce=nonce,
                                    expires_at=now + timedelta(seconds=keep_seconds))
        # A row whose time is past may be taken again: its timestamp could no longer be accepted.
        stmt = stmt.on_conflict_do_update(
            index_elements=["institution_id", "nonce"],
            set_={"expires_at": stmt.excluded.expires_at},
            where=table.c.expires_at < now,
        ).returning(table.c.institution_id)
        with session.begin():
            accepted = session.execute(stmt).first() is not None
            if accepted and next(self._requests) % _PURGE_EVERY == 0:
                session.execute(delete(table).where(table.c.expires_at < now))
        if not accepted:
            raise errors.NonceReused()


def build_authenticator(app: Any, pii: PiiCipher) -> InstitutionAuthenticator:
    """The app's authenticator, from config (built once in ``app.wiring``)."""
    cfg = app.config
    return InstitutionAuthenticator(pii, app.extensions.get("redis"), cfg["INSTITUTION_SIGNATURE_WINDOW_SECONDS"],
                                    float(cfg.get("INSTITUTION_CACHE_SECONDS", 30)))


def signed_path() -> str:
    """The PATH of the string to sign: the full path from ``/api/v1`` plus ``?query`` when there is one."""
    query = request.query_string.decode("latin-1")
    return request.path + (f"?{query}" if query else "")


def institution() -> InstitutionIdentity:
    """The institution of this request (set by ``institution_signed``)."""
    return g.institution


def institution_signed(fn: F) -> F:
    """The request must be signed by a registered institution (SPEC §5)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        authenticator: InstitutionAuthenticator = current_app.extensions["domain"].institutions
        found = authenticator.authenticate(session(), request.headers, request.method, signed_path(),
                                           request.get_data(cache=True), now())
        g.institution = found
        g.actor_label = f"institution:{found.id}"
        return fn(*args, **kwargs)

    wrapper.api_auth = ("institution", ())  # type: ignore[attr-defined]  # read by app/openapi.py
    return wrapper  # type: ignore[return-value]
