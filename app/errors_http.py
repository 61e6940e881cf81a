"""The one place where errors become the SPEC §5 envelope."""

from __future__ import annotations

import logging

from flask import Flask, current_app, g, has_request_context, jsonify
from werkzeug.exceptions import HTTPException

from app.errors import DomainError, PayloadTooLarge, UpstreamUnavailable, ValidationFailed
from app.i18n import DEFAULT_LOCALE, message_for, request_locale, translate

log = logging.getLogger(__name__)

# How long a client should wait before retrying after an infrastructure failure (Retry-After).
INFRA_RETRY_AFTER_SECONDS = 2
PLATFORM_RETRY_AFTER_SECONDS = 5

_HTTP_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "INVALID_STATE",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
}


def locale() -> str:
    """The language of this request's messages: the locale selector Flask-Babel uses (app/i18n.py),
    called per request (``flask_babel.get_locale`` caches on the app context, which tests share)."""
    return request_locale() if has_request_context() else DEFAULT_LOCALE


def envelope(code: str, message: str, status: int, details: dict | None = None, headers: dict | None = None):
    g.error_code = code
    response = jsonify({"error": {"code": code, "message": message, "details": details or {}}})
    response.status_code = status
    response.headers["Content-Language"] = "zh-CN" if locale() == "zh" else "en"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(DomainError)
    def _domain(err: DomainError):
        headers = {"Retry-After": str(err.details["retry_after"])} if "retry_after" in err.details else None
        if headers is None and err.status == 503:
            # Every 503 says when to come back (a platform that failed sign-in, for one).
            headers = {"Retry-After": str(PLATFORM_RETRY_AFTER_SECONDS)}
        message = translate(err.template, code=err.code, params=err.params, locale=locale())
        return envelope(err.code, message, err.status, err.details, headers)

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        status = err.code or 500
        details: dict = {}
        data = getattr(err, "data", None)
        if status == 422 and data and "messages" in data:
            # Schema validation (webargs) is a malformed request in the SPEC: 400.
            status = 400
            details = {"fields": data["messages"]}
        if status == 413:
            limit = current_app.config.get("MAX_DOCUMENT_BYTES", 5 * 1024 * 1024)
            return _domain(PayloadTooLarge("The request body is too large; a document may be at most {mb} MB.",
                                           params={"mb": limit // (1024 * 1024)}, details={"max_bytes": limit}))
        # The code's own short message, never Werkzeug's long English description.
        code = _HTTP_CODES.get(status, "HTTP_ERROR")
        allow = {"Allow": ", ".join(err.valid_methods)} if getattr(err, "valid_methods", None) else None
        return envelope(code, message_for(code, locale()), status, details, allow)

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    def _unavailable(what: str):
        # The same envelope as any domain 503; ``retry_after`` in the details becomes Retry-After.
        return _domain(UpstreamUnavailable(
            "A service we depend on is briefly unavailable; please retry the same request.",
            details={"unavailable": what, "retry_after": INFRA_RETRY_AFTER_SECONDS}))

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(PoolTimeout)
    def _database_unavailable(err: Exception):
        # Connection lost, server restarting, backend terminated, pool exhausted: the transaction
        # was rolled back (or its commit never answered — every money use case is idempotent by
        # its request number), so the client may retry. Never a 500, never the driver's text
        # (it can quote SQL parameters).
        log.warning("database unavailable: %s", type(err).__name__)
        return _unavailable("database")

    @app.errorhandler(DBAPIError)
    def _dbapi(err: DBAPIError):
        if err.connection_invalidated:
            log.warning("database connection lost: %s", type(err.orig).__name__)
            return _unavailable("database")
        return _unexpected(err)

    @app.errorhandler(RedisConnectionError)
    @app.errorhandler(RedisTimeoutError)
    def _redis_unavailable(err: Exception):
        log.warning("redis unavailable: %s", type(err).__name__)
        return _unavailable("redis")

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        if isinstance(err, RecursionError):
            # Input nested deeper than any parser should follow: the client's error, not ours.
            return _domain(ValidationFailed("The request is nested too deeply.", details={"reason": "too_deep"}))
        log.exception("unhandled error")
        return envelope("INTERNAL_ERROR", message_for("INTERNAL_ERROR", locale()), 500)

