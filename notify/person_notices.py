"""Inbox notices that move no money (R21): a binding naming the person changed, or another
platform account was linked to the person.

They are written in the transaction of the change itself, one per (event key, person, kind) like
the money notices (the unique key makes a repeat impossible), and appear in ``GET /notifications``.
They are not pushed: the subscribe templates configured for this service are the money ones
(account change, co-pay receipt), whose keywords (amount, institution, settlement number) a binding
or identity event cannot fill truthfully — see docs/identity.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Notice


def add_person_notice(session: Session, *, person_id: int, kind: str, event_key: str, at: datetime,
                      content: dict[str, Any]) -> None:
    """Add one ``binding`` or ``identity`` notice to the person's inbox, unless already there."""
    if kind not in ("binding", "identity"):
        raise ValueError(f"not a non-money notice kind: {kind!r}")
    if len(event_key) > 32:
        raise ValueError("event_key is at most 32 characters")
    exists = session.scalar(select(Notice.id).where(
        Notice.movement_key == event_key, Notice.person_id == person_id, Notice.kind == kind))
    if exists is None:
        session.add(Notice(kind=kind, person_id=person_id, movement_key=event_key, content=content,
                           created_at=at))
