"""Notices that move no money (R21): a binding naming the person changed, or another platform
account was linked to the person.

They are written in the transaction of the change itself, one per (event key, person, kind) like
the money notices (the unique key makes a repeat impossible), and appear in ``GET /notifications``.
Where a receipt template is configured (``session.info["receipt_channels"]``, set from
``WECHAT_TEMPLATE_RECEIPT`` / ``ALIPAY_TEMPLATE_RECEIPT`` by the app's session factory), a pending
delivery is written for each of the person's accounts on those channels; the notifier's sweeper
sends it (the same consent, retry and delivery log as the money notices). The receipt template's
keywords are filled as ``notify.channels.person_events`` describes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from models import Delivery, Notice, User
from notify.retry import RETRY_WINDOW


def add_person_notice(session: Session, *, person_id: int, kind: str, event_key: str, at: datetime,
                      content: dict[str, Any], exclude_user_id: int | None = None) -> None:
    """Add one ``binding`` or ``identity`` notice to the person's inbox (and its pushes), unless there."""
    if kind not in ("binding", "identity"):
        raise ValueError(f"not a non-money notice kind: {kind!r}")
    if len(event_key) > 32:
        raise ValueError("event_key is at most 32 characters")
    exists = session.scalar(select(Notice.id).where(
        Notice.movement_key == event_key, Notice.person_id == person_id, Notice.kind == kind))
    if exists is not None:
        return
    notice = Notice(kind=kind, person_id=person_id, movement_key=event_key,
                    content={**content, "time": at.isoformat()}, created_at=at)
    session.add(notice)
    channels = tuple(session.info.get("receipt_channels") or ())
    if not channels:
        return
    session.flush()
    newest: dict[str, int] = {}
    for user_id, channel in session.execute(
            select(User.id, User.channel).where(User.person_id == person_id, User.channel.in_(channels),
                                                User.id != (exclude_user_id or 0))
            .order_by(User.last_login_at.asc().nulls_first(), User.id)):
        newest[channel] = user_id  # the most recently signed-in account on each channel, like money notices
    if newest:
        session.execute(insert(Delivery), [
            {"notice_id": notice.id, "channel": channel, "user_id": user_id, "state": "pending", "attempts": 0,
             "next_attempt_at": at, "give_up_at": at + RETRY_WINDOW, "created_at": at, "updated_at": at}
            for channel, user_id in newest.items()])
