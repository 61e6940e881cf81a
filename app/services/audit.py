"""Append an audit event inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app.request_context import current_request_id
from models import AuditEvent


def record(
    session: Session,
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
) -> None:
    """Add one audit event; ``details`` must hold no personal data in clear (R17). The request id
    defaults to the current request's, so an audit row can be matched to its request-log line."""
    session.add(AuditEvent(
        actor_kind=actor_kind, actor_id=actor_id, action=action, target_kind=target_kind,
        target_id=target_id, details=details or {}, request_id=request_id or current_request_id.get(), ip=ip,
        created_at=at,
    ))
