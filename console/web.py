"""What every console view shares: the signed-in staff member, roles, CSRF, headers, errors.

The console is for people: a server-side session (``app.services.console_auth``) whose random id
sits in Flask's signed session cookie (HttpOnly, SameSite=Strict, Secure in production) next to
the CSRF secret of Flask-WTF. Every non-GET request must carry the CSRF token, checked here
before any view runs, so no form can forget it. Errors become a Chinese page, never a JSON envelope.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import Blueprint, Flask, abort, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from werkzeug.exceptions import HTTPException

from app import errors
from app.policy import SHANGHAI
from app.services import console_auth
from app.web import client_ip, domain, now
from app.web import session as db_session
from console import messages

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)
WRITE = ("window", "admin")
ADMIN = ("admin",)
ALL = ("window", "admin", "auditor")
PUBLIC_ENDPOINTS = {"console.sign_in", "console.static"}
COOKIE = "copay_console"

# script-src 'self' and no inline script anywhere; images may be our inline QR/chart data.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "object-src 'none'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
# A proof document (image or PDF, never HTML: documents.py sniffs the bytes, nosniff below) is shown
# inside our own binding page: an <img>, or an <iframe> for a PDF, which frame-ancestors 'none' blocked.
DOCUMENT_CSP = "frame-ancestors 'self'"
FRAMED_ENDPOINTS = {"console.document"}


def configure(app: Flask) -> None:
    """Cookie and CSRF settings the console needs (the mini-program API does not use the session)."""
    production = app.config.get("APP_ENV") == "production"
    app.config["SESSION_COOKIE_NAME"] = "__Host-" + COOKIE if production else COOKIE
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    app.config["SESSION_COOKIE_SECURE"] = production
    app.config["SESSION_COOKIE_PATH"] = "/"
    # The token is bound to the session, which ends by itself (15 min idle, 8 h): no second clock.
    # Checked in ``install``'s ``before_request`` for every console POST, not app-wide: the JSON API
    # authenticates with bearer tokens, which a browser never sends by itself.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)


def user() -> console_auth.ConsoleUser:
    return g.console_user


def install(bp: Blueprint) -> None:
    """Register the request hooks and error pages on the console blueprint."""

    @bp.before_request
    def _authenticate_and_check_csrf() -> Any:
        g.console_user = None
        # Flask-WTF caches the signed token in ``g``; an app context shared by several requests
        # (as in tests) must not hand one session's token to another.
        g.pop("csrf_token", None)
        if request.endpoint not in PUBLIC_ENDPOINTS:
            try:
                found = console_auth.current_user(db_session(), session.get("sid"), now=now(), ip=client_ip())
            except (errors.Unauthenticated, errors.SessionExpired) as exc:
                session.pop("sid", None)
                expired = isinstance(exc, errors.SessionExpired)
                if request.method == "GET":
                    return redirect(url_for("console.sign_in", expired=1 if expired else None))
                return render_error("SESSION_EXPIRED" if expired else "UNAUTHENTICATED", 401)
            g.console_user = found
            g.principal = found.principal
            g.actor_label = f"staff:{found.id}"
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            try:
                validate_csrf(request.form.get("csrf_token"))
            except Exception:  # noqa: BLE001 — ValidationError or a missing secret: refused the same way
                raise CSRFError() from None
        return None

    @bp.after_request
    def _headers(response: Any) -> Any:
        framed = request.endpoint in FRAMED_ENDPOINTS
        response.headers["Content-Security-Policy"] = DOCUMENT_CSP if framed else CSP
        response.headers["X-Frame-Options"] = "SAMEORIGIN" if framed else "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["X-Content-Type-Options"] = "nosniff"
        if request.endpoint != "console.static":
            # Every console page may show personal data (even the sign-in page names the user).
            response.headers["Cache-Control"] = "no-store"
            response.headers["Pragma"] = "no-cache"
        return response

    @bp.errorhandler(CSRFError)
    def _csrf(_err: CSRFError) -> Any:
        return render_error("CSRF", 400)

    @bp.errorhandler(errors.DomainError)
    def _domain(err: errors.DomainError) -> Any:
        return render_error(err.code, err.status, err.details)

    @bp.errorhandler(HTTPException)
    def _http(err: HTTPException) -> Any:
        code = {401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND", 413: "PAYLOAD_TOO_LARGE"}.get(
            err.code or 500, "VALIDATION_ERROR" if (err.code or 500) < 500 else "INTERNAL_ERROR")
        return render_error(code, err.code or 500)

    bp.add_app_template_filter(yuan, "yuan")
    bp.add_app_template_filter(shanghai_time, "t")

    @bp.errorhandler(Exception)
    def _unexpected(_err: Exception) -> Any:
        log.exception("unhandled console error")
        g.error_code = "INTERNAL_ERROR"
        return render_error("INTERNAL_ERROR", 500)

    @bp.app_context_processor
    def _template_globals() -> dict[str, Any]:
        return {"csrf_token": generate_csrf, "console_user": g.get("console_user"), "m": messages,
                "can_write": _has(WRITE), "is_admin": _has(ADMIN), "can_audit": _has(("admin", "auditor"))}


def yuan(fen: Any) -> str:
    """Integer fen shown as yuan with two decimals (money is never a float before this point)."""
    if fen is None:
        return "—"
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100:,}.{abs(fen) % 100:02d}"


def shanghai_time(value: Any) -> str:
    """A moment (datetime or ISO text) as Shanghai local time, ``2026-03-01 09:30``."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
    return str(value)


def _has(roles: tuple[str, ...]) -> bool:
    found = g.get("console_user")
    return found is not None and found.role in roles


def render_error(code: str, status: int, details: dict[str, Any] | None = None) -> Any:
    return render_template("console/error.html", message=messages.error_text(code, details), code=code), status


def roles(*allowed: str) -> Callable[[F], F]:
    """Only these roles may use the view (403 page otherwise) — the same role sets as staff_api."""

    def decorator(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if g.get("console_user") is None or user().role not in allowed:
                abort(403)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def attempt(call: Callable[[], Any]) -> tuple[Any, str | None]:
    """Run one service call; a domain error becomes the Chinese message shown in the form."""
    try:
        return call(), None
    except errors.DomainError as err:
        return None, messages.error_text(err.code, err.details, template=err.template, params=err.params)


__all__ = ["ADMIN", "ALL", "WRITE", "attempt", "client_ip", "configure", "domain", "install", "now",
           "render_error", "roles", "user"]
