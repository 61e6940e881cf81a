"""The notices as people see them (R15, R16): the in-app inbox, and the delivery log for staff.

Every notice is in its recipient's inbox whatever happened to the push; users see each channel's
state as ``pending | sent | failed | no_consent`` (an attempt in flight is still ``pending``).
Staff see every attempt count, upstream error code and time, and may resend a push that failed
or whose outcome is unknown (audit-logged).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import errors
from app.pagination import clamp_limit, decode_cursor, page
from app.security.pii import mask_text
from app.services import audit
from app.timefmt import iso
from models import Delivery, Notice
from models.notice import DELIVERY_STATES
from notify.delivery import OUTCOME_UNKNOWN
from notify.retry import RETRY_WINDOW

_PUBLIC_STATE = {"sending": "pending"}
RETRYABLE_STATES = ("failed", "no_consent")


def _delivery_for_user(row: Any) -> dict[str, Any]:
    state = _PUBLIC_STATE.get(row.state, row.state)
    return {"channel": row.channel, "state": state,
            "error": row.last_error_code if state in ("failed", "no_consent") else None}


def _notice_view(notice: Notice, deliveries: Sequence[Any]) -> dict[str, Any]:
    content = notice.content or {}
    return {
        "id": notice.id,
        "kind": notice.kind,
        "settlement_no": notice.settlement_no,
        "amount_fen": notice.amount_fen,
        "balance_after_fen": notice.balance_after_fen,
        "beneficiary": content.get("beneficiary"),
        "relationship": content.get("relationship"),
        "institution": content.get("institution"),
        "event": content.get("event"),
        "binding_id": content.get("binding_id"),
        "message": content.get("message"),
        "created_at": iso(notice.created_at),
        "read_at": iso(notice.read_at),
        "deliveries": [_delivery_for_user(d) for d in deliveries],
    }


def _deliveries_of(session: Session, notice_ids: Iterable[int]) -> dict[int, list[Any]]:
    ids = list(notice_ids)
    found: dict[int, list[Any]] = {i: [] for i in ids}
    if ids:
        rows = session.execute(
            select(Delivery.notice_id, Delivery.channel, Delivery.state, Delivery.last_error_code)
            .where(Delivery.notice_id.in_(ids)).order_by(Delivery.notice_id, Delivery.channel)
        )
        for row in rows:
            found[row.notice_id].append(row)
    return found


def list_notifications(session: Session, person_id: int | None, cursor: str | None,
                       limit: int | None) -> dict[str, Any]:
    """The person's notices, newest first, keyset-paginated (two queries per page)."""
    limit = clamp_limit(limit)
    before = decode_cursor(cursor)
    if person_id is None:
        return {"items": [], "next_cursor": None}  # not verified yet: no registry person, no notices
    with session.begin():
        query = select(Notice).where(Notice.person_id == person_id)
        if before is not None:
            query = query.where(Notice.id < before)
        notices = session.scalars(query.order_by(Notice.id.desc()).limit(limit + 1)).all()
        deliveries = _deliveries_of(session, (n.id for n in notices[:limit]))
    return page(notices, limit, lambda n: n.id, lambda n: _notice_view(n, deliveries[n.id]))


def mark_read(session: Session, person_id: int | None, notice_id: int, now: datetime) -> dict[str, Any]:
    """Mark one of the person's notices read (the first reading time is kept); 404 for anyone else's."""
    with session.begin():
        if person_id is not None:
            session.execute(
                update(Notice).where(Notice.id == notice_id, Notice.person_id == person_id,
                                     Notice.read_at.is_(None)).values(read_at=now)
            )
        notice = session.scalars(
            select(Notice).where(Notice.id == notice_id, Notice.person_id == person_id)
        ).first() if person_id is not None else None
        if notice is None:
            raise errors.NotFound("No such notification.")
        return _notice_view(notice, _deliveries_of(session, [notice.id])[notice.id])


# --- staff ----------------------------------------------------------------------------------


def _delivery_for_staff(delivery: Delivery, notice: Notice) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "notice_id": notice.id,
        "kind": notice.kind,
        "settlement_no": notice.settlement_no,
        "person_id": notice.person_id,
        "user_id": delivery.user_id,
        "channel": delivery.channel,
        "state": delivery.state,
        "attempts": delivery.attempts,
        "template_id": delivery.template_id,
        "last_error_code": delivery.last_error_code,
        "last_error": mask_text(delivery.last_error) if delivery.last_error else None,
        "msgid": delivery.msgid,
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.state == "pending" else None,
        "give_up_at": iso(delivery.give_up_at),
        "claimed_until": iso(delivery.claimed_until),
        "sent_at": iso(delivery.sent_at),
        "confirmed_at": iso(delivery.confirmed_at),
        "created_at": iso(delivery.created_at),
        "updated_at": iso(delivery.updated_at),
    }


def list_deliveries(session: Session, *, state: str | None, channel: str | None, settlement_no: str | None,
                    cursor: str | None, limit: int | None) -> dict[str, Any]:
    """Deliveries newest first, filtered by state, channel or settlement number (staff)."""
    if state is not None and state not in DELIVERY_STATES:
        raise errors.ValidationFailed("Unknown state.", details={"state": state, "allowed": list(DELIVERY_STATES)})
    limit = clamp_limit(limit)
    before = decode_cursor(cursor)
    query = select(Delivery, Notice).join(Notice, Notice.id == Delivery.notice_id)
    if state is not None:
        query = query.where(Delivery.state == state)
    if channel is not None:
        query = query.where(Delivery.channel == channel)
    if settlement_no is not None:
        query = query.where(Notice.settlement_no == settlement_no)
    if before is not None:
        query = query.where(Delivery.id < before)
    with session.begin():
        rows = session.execute(query.order_by(Delivery.id.desc()).limit(limit + 1)).all()
        return page(rows, limit, lambda r: r.Delivery.id, lambda r: _delivery_for_staff(r.Delivery, r.Notice))


def retry_delivery(session: Session, notifier: Any, staff_id: int, delivery_id: int, reason: str, now: datetime,
                   ip: str | None = None, request_id: str | None = None) -> dict[str, Any]:
    """Send a failed (or never-consented) push again, e.g. after checking an ``outcome_unknown``
    with the user; a fresh 24-hour retry window starts now."""
    from app.services.staff_accounts import require_staff_role

    with session.begin():
        require_staff_role(session, staff_id)
        row = session.execute(
            select(Delivery, Notice).join(Notice, Notice.id == Delivery.notice_id)
            .where(Delivery.id == delivery_id).with_for_update(of=Delivery)
        ).first()
        if row is None:
            raise errors.NotFound("No such delivery.")
        delivery, notice = row.Delivery, row.Notice
        if delivery.state not in RETRYABLE_STATES:
            raise errors.InvalidState("A {state} delivery cannot be resent.", params={"state": delivery.state},
                                      details={"state": delivery.state})
        audit.record(session, actor_kind="staff", actor_id=staff_id, action="notice.resend", at=now,
                     target_kind="delivery", target_id=delivery.id, ip=ip, request_id=request_id,
                     details={"previous_state": delivery.state, "previous_error": delivery.last_error_code,
                              "outcome_was_unknown": delivery.last_error_code == OUTCOME_UNKNOWN,
                              "reason": mask_text(reason)[:200]})
        delivery.state, delivery.next_attempt_at, delivery.give_up_at = "pending", now, now + RETRY_WINDOW
        delivery.claimed_until, delivery.updated_at = None, now
        session.flush()
        view = _delivery_for_staff(delivery, notice)
    notifier.committed([delivery_id])
    return view
