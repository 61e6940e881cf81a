"""Append an audit event inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.request_context import current_request_id
from models import AuditEvent

TABLE = AuditEvent.__table__
# Built once: the hot paths write their audit row with this Core statement (or fold it into a
# data-modifying CTE of their own on PostgreSQL, with ``values``), not through an ORM flush.
INSERT = insert(TABLE)


def values(
    *,
    actor_kind: str,
    actor_id: int | None,
    action: str,
    at: datetime,
    target_kind: str | None = None,
    target_id: int | None = None,
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
    ip: str | None = None,
) -> dict[str, Any]:
    """The columns of one audit row, exactly as ``record`` writes them (request id defaulted)."""
    return {"actor_kind": actor_kind, "actor_id": actor_id, "action": action, "target_kind": target_kind,
            "target_id": target_id, "details": details or {}, "request_id": request_id or current_request_id.get(),
            "ip": ip, "created_at": at}


def record(session: Session, **fields: Any) -> None:
    """Add one audit event (the keyword arguments of ``values``); ``details`` must hold no personal
    data in clear (R17). The request id defaults to the current request's, so an audit row can be
    matched to its request-log line."""
    session.add(AuditEvent(**values(**fields)))


def write(session: Session, **fields: Any) -> None:
    """``record``, written at once with one Core statement on the transaction's connection (no ORM
    flush): for the hot paths. Same columns, same rules (R17)."""
    session.connection().execute(INSERT, values(**fields))
