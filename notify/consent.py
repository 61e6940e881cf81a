"""Subscribe-message consent (R15): one-time credits, long-term choices, and the reports behind them.

WeChat one-time templates grant one send per "accept" (credits add up; a send uses one);
long-term templates allow every send until the user switches them off. Alipay's
``my.requestSubscribeMessage`` works the same way and is recorded the same way.

Two sources report a WeChat popup choice: the mini-program (``POST /subscriptions``, with the
template's mode) and WeChat's ``subscribe_msg_popup_event`` push. Each one-time accept is counted
once: a report is paired with an unpaired accept of the other source for the same user and
template from the last ``PAIRING_WINDOW``, and only an unpaired one adds a credit. Should one
source miss an accept, the credit still comes from the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app import errors
from models import Consent
from models.notice import ConsentReport

PAIRING_WINDOW = timedelta(minutes=10)
RESULTS = ("accept", "reject", "ban", "filter")
MODES = ("one_time", "long_term")
SOURCES = ("client", "wechat_event")


@dataclass(frozen=True)
class Choice:
    """One reported choice for one template."""

    template_id: str
    result: str  # accept | reject | ban | filter
    event: str = "popup"  # popup | change
    mode: str | None = None  # one_time | long_term, when the client says
    event_key: str | None = None


def event_key(openid: str, create_time: str, event: str, position: int, template_id: str) -> str:
    """Identifies one item of one pushed event, so that WeChat's repeats of a push count once."""
    return hashlib.sha256(f"{openid}|{create_time}|{event}|{position}|{template_id}".encode()).hexdigest()


def _insert(session: Session):
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


def _locked_consent(session: Session, user_id: int, channel: str, template_id: str, now: datetime) -> Consent:
    """The consent row of (user, template), created if missing, locked until the transaction ends."""
    session.execute(
        _insert(session)(Consent)
        .values(user_id=user_id, channel=channel, template_id=template_id, one_time_credits=0, created_at=now,
                updated_at=now)
        .on_conflict_do_nothing(index_elements=["user_id", "template_id"])
    )
    return session.scalars(
        select(Consent).where(Consent.user_id == user_id, Consent.template_id == template_id)
        .with_for_update().execution_options(populate_existing=True)
    ).one()


def _pair(session: Session, user_id: int, template_id: str, other_source: str, now: datetime) -> ConsentReport | None:
    """The oldest unpaired popup accept of ``other_source`` within the pairing window."""
    return session.scalars(
        select(ConsentReport)
        .where(ConsentReport.user_id == user_id, ConsentReport.template_id == template_id,
               ConsentReport.source == other_source, ConsentReport.event == "popup",
               ConsentReport.result == "accept", ConsentReport.matched.is_(False),
               ConsentReport.created_at >= now - PAIRING_WINDOW)
        .order_by(ConsentReport.created_at, ConsentReport.id)
        .limit(1)
    ).first()


def _apply(session: Session, consent: Consent, source: str, choice: Choice, now: datetime) -> None:
    """Apply one report to the (locked) consent row and log it."""
    if choice.event_key is not None and session.scalar(
        select(ConsentReport.id).where(ConsentReport.event_key == choice.event_key)
    ):
        return  # WeChat repeated a push we already took
    report = ConsentReport(user_id=consent.user_id, channel=consent.channel, template_id=consent.template_id,
                           source=source, event=choice.event, result=choice.result, mode=choice.mode,
                           event_key=choice.event_key, created_at=now)
    session.add(report)
    other = "wechat_event" if source == "client" else "client"
    if choice.result == "accept" and choice.event == "popup":
        twin = _pair(session, consent.user_id, consent.template_id, other, now) if consent.channel == "wechat" else None
        if twin is not None:
            twin.matched = report.matched = True
        if choice.mode == "long_term":
            consent.long_term = "accept"
            if twin is not None and consent.one_time_credits > 0:
                # The pushed twin arrived first and, not knowing the mode, counted a credit.
                consent.one_time_credits -= 1
        elif twin is None and not (source == "wechat_event" and consent.long_term == "accept"):
            consent.one_time_credits += 1
        if consent.long_term in ("reject", "ban") and choice.mode != "long_term":
            consent.long_term = None  # the user subscribes again
    elif choice.result == "accept":
        # Switched back on in settings: no credit (only popups grant those), no longer refused.
        if consent.long_term in ("reject", "ban"):
            consent.long_term = None
    elif choice.result == "reject":
        if choice.event == "change":
            # Switched off in the user's settings: nothing may be sent any more.
            consent.one_time_credits = 0
            consent.long_term = "reject"
        elif choice.mode == "long_term" or consent.long_term == "accept":
            consent.long_term = "reject"
        # A one-time "reject" declines this request only; earlier credits stay.
    elif choice.result == "ban":
        consent.one_time_credits = 0
        consent.long_term = "ban"
    consent.updated_at = now


def apply_choices(session: Session, user_id: int, channel: str, source: str, choices: Iterable[Choice],
                  now: datetime) -> None:
    """Apply reported choices inside the caller's transaction (one lock per template, in order)."""
    for choice in sorted(choices, key=lambda c: c.template_id):
        consent = _locked_consent(session, user_id, channel, choice.template_id, now)
        _apply(session, consent, source, choice, now)


def consent_view(consent: Consent | None, template_id: str) -> dict[str, Any]:
    return {
        "template_id": template_id,
        "one_time_credits": consent.one_time_credits if consent else 0,
        "long_term": consent.long_term if consent else None,
    }


def templates_of(config: Mapping[str, Any], channel: str) -> list[str]:
    """The configured template ids of a channel (deduction first, then receipt)."""
    prefix = "WECHAT" if channel == "wechat" else "ALIPAY"
    names = (f"{prefix}_TEMPLATE_DEDUCTION", f"{prefix}_TEMPLATE_RECEIPT")
    return [config[name] for name in names if config.get(name)]


def record_subscriptions(session: Session, config: Mapping[str, Any], user_id: int, user_channel: str,
                         channel: str, mode: str, results: Mapping[str, str], now: datetime) -> dict[str, Any]:
    """Record what ``wx.requestSubscribeMessage`` / ``my.requestSubscribeMessage`` told the client."""
    if channel != user_channel:
        raise errors.ValidationFailed(
            f"This sign-in is a {user_channel} user; it cannot subscribe on {channel}.",
            details={"channel": channel},
        )
    known = templates_of(config, channel)
    unknown = sorted(set(results) - set(known))
    if unknown:
        raise errors.ValidationFailed("Unknown template id.", details={"template_ids": unknown})
    with session.begin():
        apply_choices(session, user_id, channel, "client",
                      [Choice(t, r, mode=mode) for t, r in results.items()], now)
        return _listing(session, user_id, channel, known)


def list_subscriptions(session: Session, config: Mapping[str, Any], user_id: int, channel: str) -> dict[str, Any]:
    """The user's consent for each of our templates on their channel."""
    with session.begin():
        return _listing(session, user_id, channel, templates_of(config, channel))


def _listing(session: Session, user_id: int, channel: str, template_ids: list[str]) -> dict[str, Any]:
    rows = {c.template_id: c for c in session.scalars(
        select(Consent).where(Consent.user_id == user_id, Consent.template_id.in_(template_ids))
    )}
    return {"channel": channel, "items": [consent_view(rows.get(t), t) for t in template_ids]}


# --- used by the delivery claim and its outcome (inside their transactions) --------------------


_C = Consent.__table__
_TAKE = (
    update(_C)
    .where(_C.c.user_id == bindparam("b_user"), _C.c.template_id == bindparam("b_template"),
           (_C.c.long_term == "accept") | (_C.c.one_time_credits > 0))
    .values(one_time_credits=case((_C.c.long_term == "accept", _C.c.one_time_credits),
                                  else_=_C.c.one_time_credits - 1))
    .returning(_C.c.long_term)
)


def take_consent(session: Session, user_id: int, template_id: str) -> str | None:
    """Use the user's consent for one send: ``long_term``, ``credit`` (one credit used), or None."""
    row = session.execute(_TAKE, {"b_user": user_id, "b_template": template_id}).first()
    if row is None:
        return None
    return "long_term" if row.long_term == "accept" else "credit"


def give_back_credit(session: Session, user_id: int, template_id: str, now: datetime) -> None:
    """The platform did not send: the one-time credit taken for the attempt is still there."""
    session.execute(
        update(Consent).where(Consent.user_id == user_id, Consent.template_id == template_id)
        .values(one_time_credits=Consent.one_time_credits + 1, updated_at=now)
    )


def take_back_credit(session: Session, user_id: int, template_id: str, now: datetime) -> None:
    """A message we had counted as not sent was sent after all: it used a credit."""
    session.execute(
        update(Consent).where(Consent.user_id == user_id, Consent.template_id == template_id,
                              Consent.one_time_credits > 0)
        .values(one_time_credits=Consent.one_time_credits - 1, updated_at=now)
    )


def platform_refused(session: Session, user_id: int, template_id: str, now: datetime) -> None:
    """The platform says the user has no subscription (WeChat 43101): believe it."""
    session.execute(
        update(Consent).where(Consent.user_id == user_id, Consent.template_id == template_id)
        .values(one_time_credits=0,
                long_term=case((Consent.long_term == "accept", "reject"), else_=Consent.long_term),
                updated_at=now)
    )
