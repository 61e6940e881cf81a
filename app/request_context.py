"""The current request id, readable below the web layer (audit rows) without importing Flask."""

from __future__ import annotations

from contextvars import ContextVar

current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)
