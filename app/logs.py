"""Structured request log: one JSON line per request with request id, route, status, latency.

The route is logged as its URL rule (``/api/v1/vouchers/<code>/qr.png``), never the concrete
path or query, and every message passes through ``mask_text`` so that an ID number, mobile
number or similar never reaches a log line (R17).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from typing import Any

from flask import Flask, Response, g, request

from app.request_context import current_request_id
from app.security.pii import mask_text

log = logging.getLogger("app.request")

# Every number ``mask_text`` masks (18- and 15-digit ID numbers, mobile numbers) has at least 11
# digits, each at most 3 characters (separators) after the one before: a text without such a run
# comes out of ``mask_text`` unchanged, so it is not scanned.
_DIGIT_RUN = re.compile(r"\d(?:\D{0,3}\d){10}")


def _masked(text: str) -> str:
    return mask_text(text) if _DIGIT_RUN.search(text) else text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": _masked(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if fields:
            payload.update({k: _masked(v) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_info:
            payload["exc"] = _masked(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def init_app(app: Flask) -> None:
    configure_logging(app.config.get("LOG_LEVEL", "INFO"))

    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()
        incoming = request.environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if incoming.isalnum() and len(incoming) <= 64 else secrets.token_hex(8)
        g.request_id = request_id
        g.request_id_token = current_request_id.set(request_id)

    @app.after_request
    def _log(response: Response) -> Response:
        state = g._get_current_object()  # the request's g itself, not one proxy look-up per field
        request_id = state.get("request_id")
        response.headers["X-Request-Id"] = request_id if request_id is not None else ""
        token = state.pop("request_id_token", None)
        if token is not None:
            current_request_id.reset(token)
        if not log.isEnabledFor(logging.INFO):
            return response  # the line would be dropped: do not build it
        started = state.get("request_started")
        latency_ms = round((time.perf_counter() - started) * 1000, 2) if started else None
        rule = request.url_rule
        log.info(
            "request",
            extra={"fields": {
                "request_id": request_id,
                "method": request.method,
                "route": rule.rule if rule is not None else "<unmatched>",
                "status": response.status_code,
                "latency_ms": latency_ms,
                "actor": state.get("actor_label"),
                "error_code": state.get("error_code"),
            }},
        )
        return response
