"""Authorization records (共济授权记录, R16) for users and staff, and the staff audit log.

Both lists are newest first with keyset pagination (``{items, next_cursor}``, app.pagination).
A user sees the records of bindings they are party to, as owner or beneficiary, and nothing else.
The actor of a record is ``{"kind": "owner" | "beneficiary" | "system"}`` for users' own side
(no internal user ids are shown) and ``{"kind": "staff", "id": <staff id>}`` for window staff, so a
user can quote the staff number when asking about a change.

A suspension's reason (R11) is staff's words about the person suspended: that person reads it, and
staff; the other party of each binding it touches reads a standard text saying what it means for
them (``user_reason``) — the fact and, by the record's time, since when. A pair (binding-scope)
suspension is of both people of the binding, who both read it.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app import errors
from app.i18n import DEFAULT_LOCALE, N_, text
from app.pagination import clamp_limit, decode_cursor, page
from app.policy import SHANGHAI
from app.services.auth import Principal
from app.services.bindings import require_person
from models import AuditEvent, AuthorizationEvent, Binding

# R11 + R16: whose a suspension's reason is, by the suspension's scope (recorded in the event's details).
_REASON_READERS = {"owner": ("owner",), "beneficiary": ("beneficiary",), "binding": ("owner", "beneficiary")}
# What the other party reads instead, by (event, scope); an unknown scope fails closed (None: nobody's).
_STANDARD_REASONS = {
    ("suspended", "owner"): N_("Co-pay from the account owner is suspended: their account pays nothing for you "
                               "meanwhile."),
    ("lifted", "owner"): N_("Co-pay from the account owner has resumed."),
    ("suspended", "beneficiary"): N_("Co-pay for this family member is suspended: your account pays nothing for "
                                     "them meanwhile."),
    ("lifted", "beneficiary"): N_("Co-pay for this family member has resumed."),
    ("suspended", None): N_("Co-pay under this binding is suspended."),
    ("lifted", None): N_("Co-pay under this binding has resumed."),
}


def _scope(details: dict[str, Any] | None) -> str | None:
    scope = (details or {}).get("scope")
    return scope if isinstance(scope, str) else None


def reason_readable_by(event: str, details: dict[str, Any] | None, role: str) -> bool:
    """Whether the party ``role`` ("owner" | "beneficiary") of a binding may read the reason of its
    ``event``: every reason but a suspension's or a lift's, which only the suspended may (R11, R16)."""
    if event not in ("suspended", "lifted"):
        return True
    return role in _REASON_READERS.get(_scope(details) or "", ())


def user_reason(event: str, details: dict[str, Any] | None, reason: str | None, role: str,
                locale: str | None = DEFAULT_LOCALE) -> str | None:
    """The reason of an authorization record as the party ``role`` reads it, in ``locale``."""
    if reason_readable_by(event, details, role):
        return reason
    standard = _STANDARD_REASONS.get((event, _scope(details))) or _STANDARD_REASONS[(event, None)]
    return text(standard, locale)


def _actor(event: AuthorizationEvent, *, for_staff: bool) -> dict[str, Any]:
    if event.actor_kind == "staff" or for_staff:
        return {"kind": event.actor_kind, "id": event.actor_id}
    return {"kind": event.actor_kind}


def record_view(event: AuthorizationEvent, *, for_staff: bool = False, role: str | None = None,
                locale: str | None = DEFAULT_LOCALE) -> dict[str, Any]:
    """The SPEC §5 authorization record; ``role`` is the caller's part in the binding (users, who
    read a suspension's reason only when it is theirs); staff read every reason as written."""
    reason = event.reason if role is None else user_reason(event.event, event.details, event.reason, role, locale)
    view: dict[str, Any] = {
        "id": event.id,
        "binding_id": event.binding_id,
        "event": event.event,
        "actor": _actor(event, for_staff=for_staff),
        "channel": event.channel,
        "reason": reason,
        "at": event.at,
        "details": event.details or {},
    }
    if role is not None:
        view["role"] = role
    return view


def list_authorization_records(session: Session, *, caller: Principal, binding_id: int | None = None,
                               cursor: str | None = None, limit: int | None = None,
                               locale: str | None = DEFAULT_LOCALE) -> dict[str, Any]:
    """R16: the authorization records of every binding the user is party to (or of one of them);
    standard texts in ``locale``."""
    person_id = require_person(caller)
    limit = clamp_limit(limit)
    last_id = decode_cursor(cursor)
    query = (select(AuthorizationEvent, Binding.owner_person_id)
             .join(Binding, Binding.id == AuthorizationEvent.binding_id)
             .where(or_(Binding.owner_person_id == person_id, Binding.beneficiary_person_id == person_id)))
    if binding_id is not None:
        query = query.where(AuthorizationEvent.binding_id == binding_id)
    if last_id is not None:
        query = query.where(AuthorizationEvent.id < last_id)
    with session.begin():
        rows = session.execute(query.order_by(AuthorizationEvent.id.desc()).limit(limit + 1)).all()
    return page(rows, limit, lambda row: row[0].id,
                lambda row: record_view(row[0], role="owner" if row[1] == person_id else "beneficiary",
                                        locale=locale))


def list_binding_records_for_staff(session: Session, *, binding_id: int, cursor: str | None = None,
                                   limit: int | None = None) -> dict[str, Any]:
    """Staff look-up: one binding's authorization records, with actor ids."""
    limit = clamp_limit(limit)
    last_id = decode_cursor(cursor)
    query = select(AuthorizationEvent).where(AuthorizationEvent.binding_id == binding_id)
    if last_id is not None:
        query = query.where(AuthorizationEvent.id < last_id)
    with session.begin():
        if session.get(Binding, binding_id) is None:
            raise errors.NotFound("No such binding.")
        rows = list(session.scalars(query.order_by(AuthorizationEvent.id.desc()).limit(limit + 1)))
    return page(rows, limit, lambda event: event.id, lambda event: record_view(event, for_staff=True))


def audit_view(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.created_at,
        "actor": {"kind": event.actor_kind, "id": event.actor_id},
        "action": event.action,
        "target": {"kind": event.target_kind, "id": event.target_id} if event.target_kind else None,
        "details": event.details or {},
        "ip": event.ip,
        "request_id": event.request_id,
    }


def list_audit_log(session: Session, *, action: str | None = None, actor_kind: str | None = None,
                   actor_id: int | None = None, target_kind: str | None = None, target_id: int | None = None,
                   cursor: str | None = None, limit: int | None = None, since: str | date | None = None,
                   until: str | date | None = None) -> dict[str, Any]:
    """The audit log, newest first, optionally narrowed by action, actor, target or an inclusive
    range of Asia/Shanghai dates (``since``/``until``, ``YYYY-MM-DD``)."""
    limit = clamp_limit(limit)
    last_id = decode_cursor(cursor)
    query = select(AuditEvent)
    if since is not None:
        query = query.where(AuditEvent.created_at >= _day_start(since, "since"))
    if until is not None:
        query = query.where(AuditEvent.created_at < _day_start(until, "until") + timedelta(days=1))
    for column, value in ((AuditEvent.action, action), (AuditEvent.actor_kind, actor_kind),
                          (AuditEvent.actor_id, actor_id), (AuditEvent.target_kind, target_kind),
                          (AuditEvent.target_id, target_id)):
        if value is not None:
            query = query.where(column == value)
    if last_id is not None:
        query = query.where(AuditEvent.id < last_id)
    with session.begin():
        rows = list(session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit + 1)))
    return page(rows, limit, lambda event: event.id, audit_view)


def _day_start(value: str | date, field: str) -> datetime:
    """Midnight in Shanghai of a date given as ``YYYY-MM-DD`` (400 otherwise)."""
    try:
        day = value if isinstance(value, date) else date.fromisoformat(value)
    except (TypeError, ValueError):
        raise errors.ValidationFailed("Dates are YYYY-MM-DD.", details={"field": field}) from None
    # A filter bound far outside any record's time means "no bound": clamp it, so that 0001-01-01 or
    # 9999-12-31 (+ 1 day) never overflow the UTC conversion.
    day = min(max(day, _EARLIEST_DAY), _LATEST_DAY)
    return datetime.combine(day, time(0), SHANGHAI)


_EARLIEST_DAY, _LATEST_DAY = date(1900, 1, 1), date(9000, 12, 31)
