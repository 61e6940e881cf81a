"""Send one delivery, idempotently (R15).

1. **Claim** (one short transaction for a few rows): only ``pending`` rows that are due are
   claimed, locked with ``SELECT … FOR UPDATE`` so that exactly one worker wins each. The same
   transaction checks consent (taking a one-time credit, or a long-term accept) and renders the
   message. A row becomes ``sending`` with a lease (``claimed_until``) and ``attempts + 1``, which
   fences the later mark.
2. **Send**, outside any transaction: no lock is held across the network.
3. **Mark** (a second short transaction): ``sent``, a retry (``pending`` later), ``failed`` or
   ``no_consent``. A credit taken for an attempt the platform refused is given back.

The idempotent send key is the delivery row, ``(notice_id, channel)``: the platform is called only
for a row this worker moved from ``pending`` to ``sending``, never for one already ``sent``.

Crash between send and mark: the row stays ``sending``. When its lease runs out the sweeper does
**not** send it again — the platform may already have shown it, and a second "¥12.30 was taken
from your account" for one deduction is worse than a missing push (the notice is in the inbox
whatever happens). It becomes ``failed`` with ``outcome_unknown``, visible to staff, who can
resend it (``POST /staff/notices/{id}/retry``). For WeChat the truth usually arrives anyway:
``subscribe_msg_sent_event`` names the MsgID of every message WeChat delivered, and
``record_sent_results`` matches an unknown MsgID to the user's oldest delivery of that template
whose outcome is unknown (``sending``, ``outcome_unknown``, or ``pending`` after a timeout),
marking it sent — which also stops the retry of a send that timed out but did go through.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.platforms import PlatformError
from models import Delivery, Notice, User
from notify import consent
from notify.channels import Channel, Message, NoticeView, Recipient
from notify.retry import RETRY_WINDOW, after_transient_failure

log = logging.getLogger(__name__)

OUTCOME_UNKNOWN = "outcome_unknown"
# Codes meaning "this user has not subscribed to this template". WeChat: 43101
# (https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-message-management/subscribe-message/sendMessage.html).
# Alipay documents no such sub_code for templatemessage.send; USER_NOT_SUBSCRIBED is the emulator's
# (plausible, not verified against the real platform).
NO_CONSENT_CODES = {"wechat": frozenset({"43101"}), "alipay": frozenset({"USER_NOT_SUBSCRIBED"})}
# A send that timed out may have been delivered; WeChat's sent event can still confirm it.
AMBIGUOUS_CODES = frozenset({"timeout", OUTCOME_UNKNOWN})
_ERROR_TEXT_LIMIT = 500
# Deliveries claimed together: one commit for several rows, yet a short lease for each.
CLAIM_CHUNK = 5

# The hot path's statements, built once (Core, bound parameters): a push costs one claim
# transaction and one mark transaction, and little Python besides.
_D = Delivery.__table__
_DUE = bindparam("b_now", type_=_D.c.next_attempt_at.type)
_CLAIMABLE = (
    select(Delivery.id, Delivery.channel, Delivery.user_id, Delivery.attempts, Delivery.give_up_at,
           Delivery.created_at, Notice.id.label("notice_id"), Notice.kind, Notice.settlement_no, Notice.content,
           User.wechat_openid, User.alipay_user_id, User.alipay_open_id)
    .join(Notice, Notice.id == Delivery.notice_id)
    .join(User, User.id == Delivery.user_id)
    .where(Delivery.id.in_(bindparam("b_ids", expanding=True)), Delivery.state == "pending",
           or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= _DUE))
    .order_by(Delivery.id)
    # Lock order everywhere: delivery rows, then consent rows. Workers racing for the same rows
    # queue here; the losers then find them no longer pending.
    .with_for_update(of=Delivery)
)
_CLAIM = (
    update(_D).where(_D.c.id == bindparam("b_id"), _D.c.state == "pending")
    .values(state=bindparam("b_state"), attempts=bindparam("b_attempts"), updated_at=bindparam("b_now"),
            template_id=bindparam("b_template"), claimed_until=bindparam("b_until"),
            credit_used=bindparam("b_credit"), last_error_code=bindparam("b_code"), last_error=bindparam("b_error"))
)
_FENCE = and_(_D.c.id == bindparam("b_id"), _D.c.attempts == bindparam("b_fence"))
_UNKNOWN = and_(_D.c.state == "failed", _D.c.last_error_code == OUTCOME_UNKNOWN)
_MARK_SENT = (
    update(_D).where(_FENCE, or_(_D.c.state.in_(("sending", "sent")), _UNKNOWN))
    .values(state="sent", msgid=bindparam("b_msgid"), sent_at=bindparam("b_now"), claimed_until=None,
            last_error_code=None, last_error=None, updated_at=bindparam("b_now"))
)
# A sent event may have been matched to another delivery of the same template before the worker
# recorded its msgid; the msgid is this delivery's, so that match was wrong.
_UNMATCH = (
    update(_D).where(_D.c.channel == "wechat", _D.c.msgid == bindparam("b_msgid"), _D.c.id != bindparam("b_id"))
    .values(state="failed", msgid=None, sent_at=None, last_error_code=OUTCOME_UNKNOWN,
            last_error="matched to a sent event that turned out to be another message", updated_at=bindparam("b_now"))
)
_MARK_FAILED = (
    update(_D).where(_FENCE, or_(_D.c.state == "sending", _UNKNOWN))
    .values(state=bindparam("b_state"), claimed_until=None, last_error_code=bindparam("b_code"),
            last_error=bindparam("b_error"), updated_at=bindparam("b_now"),
            next_attempt_at=func.coalesce(bindparam("b_next", type_=_D.c.next_attempt_at.type), _D.c.next_attempt_at))
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Outcome:
    delivery_id: int
    state: str  # sent | pending (retry) | failed | no_consent | skipped
    code: str | None = None


@dataclass
class _Claim:
    delivery_id: int
    fence: int
    channel: Channel
    user_id: int
    template_id: str
    recipient: Recipient
    message: Message
    credit_used: bool
    give_up_at: datetime


@dataclass
class Deliverer:
    """Delivers deliveries by id through the channels; safe to run in many threads and processes."""

    sessions: sessionmaker[Session]
    channels: Mapping[str, Channel]
    retry_base_seconds: float = 30.0
    lease_seconds: float = 60.0
    clock: Callable[[], datetime] = utcnow
    rng: random.Random = field(default_factory=random.Random)

    def deliver(self, delivery_id: int) -> Outcome:
        """Claim, send and mark one delivery; ``skipped`` when it is not ours to send."""
        return self.deliver_batch([delivery_id])[0]

    def deliver_batch(self, delivery_ids: Iterable[int]) -> list[Outcome]:
        """Deliver these, ``CLAIM_CHUNK`` at a time: claim a chunk in one transaction (one commit for
        all), then send and mark each of its rows."""
        ids = list(dict.fromkeys(delivery_ids))
        outcomes: dict[int, Outcome] = {}
        for start in range(0, len(ids), CLAIM_CHUNK):
            claims, chunk_outcomes = self._claim_isolated(ids[start:start + CLAIM_CHUNK])
            outcomes.update(chunk_outcomes)
            for claim in claims:
                outcomes[claim.delivery_id] = self._send_and_mark_guarded(claim)
        return [outcomes[i] for i in ids]

    def deliver_many(self, delivery_ids: Iterable[int]) -> list[Outcome]:
        return self.deliver_batch(delivery_ids)

    def _claim_isolated(self, ids: list[int]) -> tuple[list[_Claim], dict[int, Outcome]]:
        """Claim a chunk; if that raises (a row the claim cannot handle, the database going away),
        claim its rows one by one, so that one bad row costs only itself, never its neighbours."""
        try:
            return self._claim_many(ids)
        except Exception:  # noqa: BLE001 — isolate the row that caused it
            if len(ids) == 1:
                return [], {ids[0]: self._claim_failed(ids[0])}
            log.warning("deliveries %s: claiming them together failed; claiming one by one", ids)
        claims: list[_Claim] = []
        outcomes: dict[int, Outcome] = {}
        for delivery_id in ids:
            try:
                one_claim, one_outcome = self._claim_many([delivery_id])
            except Exception:  # noqa: BLE001
                outcomes[delivery_id] = self._claim_failed(delivery_id)
                continue
            claims.extend(one_claim)
            outcomes.update(one_outcome)
        return claims, outcomes

    def _claim_failed(self, delivery_id: int) -> Outcome:
        """A row whose claim raised: count it as a failed attempt and retry it later like a transient
        failure (so it is not queued again by every sweep), giving up at the end of its window. If even
        that cannot be written (the database is away) the row stays as it was for the sweeper."""
        log.exception("delivery %s: claiming it failed", delivery_id)
        now = self.clock()
        try:
            with self.sessions() as session, session.begin():
                row = session.execute(
                    select(Delivery.attempts, Delivery.give_up_at, Delivery.created_at)
                    .where(Delivery.id == delivery_id, Delivery.state == "pending").with_for_update()
                ).first()
                if row is None:
                    return Outcome(delivery_id, "skipped")
                attempts = row.attempts + 1
                give_up_at = row.give_up_at or (row.created_at + RETRY_WINDOW)
                decision = after_transient_failure(attempts, now, give_up_at, self.retry_base_seconds, self.rng)
                state = "pending" if decision.retry else "failed"
                session.execute(
                    update(_D).where(_D.c.id == delivery_id, _D.c.state == "pending")
                    .values(state=state, attempts=attempts, next_attempt_at=decision.at or now, updated_at=now,
                            claimed_until=None, last_error_code="claim_error",
                            last_error=("" if decision.retry else f"gave up after {attempts} attempts: ")
                            + "the delivery could not be prepared for sending (see the worker log)")
                )
        except Exception:  # noqa: BLE001 — nothing written; the sweeper finds the row again
            log.warning("delivery %s: could not record the failed claim", delivery_id)
            return Outcome(delivery_id, "skipped", "claim_error")
        return Outcome(delivery_id, state, "claim_error")

    def _send_and_mark_guarded(self, claim: _Claim) -> Outcome:
        """Send and mark one claimed row; an error recording its outcome costs this row only (it stays
        ``sending`` and its lease runs out as outcome unknown), never the rows claimed with it."""
        try:
            return self._send_and_mark(claim)
        except Exception:  # noqa: BLE001
            log.exception("delivery %s: recording the outcome failed; left to its lease", claim.delivery_id)
            return Outcome(claim.delivery_id, "failed", OUTCOME_UNKNOWN)

    def _send_and_mark(self, claim: _Claim) -> Outcome:
        try:
            msgid = claim.channel.send(claim.recipient, claim.message)
        except PlatformError as err:
            return self._mark_failed(claim, err)
        except Exception as exc:  # noqa: BLE001 — a bug or an unexpected transport error
            # We cannot tell whether the platform got the message: treat it like a crash.
            log.exception("delivery %s: unexpected error while sending", claim.delivery_id)
            return self._mark_unknown(claim, f"{type(exc).__name__} while sending")
        return self._mark_sent(claim, msgid)

    # --- 1. claim -------------------------------------------------------------------------------

    def _claim_many(self, ids: list[int]) -> tuple[list[_Claim], dict[int, Outcome]]:
        """Claim every due, pending delivery among ``ids`` in one transaction."""
        now = self.clock()
        # The rows of a chunk are sent one after the other: the lease covers them all.
        lease = timedelta(seconds=self.lease_seconds * len(ids))
        outcomes = {i: Outcome(i, "skipped") for i in ids}
        claims: list[_Claim] = []
        with self.sessions() as session, session.begin():
            # Core statements on the transaction's connection: no ORM execution layer per statement.
            connection = session.connection()
            rows = connection.execute(_CLAIMABLE, {"b_ids": ids, "b_now": now}).all()
            planned = []
            for row in rows:
                channel = self.channels.get(row.channel)
                template_id = channel.template_for(row.kind) if channel else None
                planned.append((row, channel, template_id))
            # Consent rows in one global order, so that two batches never wait on each other in a circle.
            planned.sort(key=lambda p: (p[0].user_id, p[2] or "", p[0].id))
            updates = []
            for row, channel, template_id in planned:
                claim, values = self._plan(session, row, channel, template_id, now, lease)
                updates.append(values)
                if claim is not None:
                    claims.append(claim)
                else:
                    outcomes[row.id] = Outcome(row.id, values["b_state"], values["b_code"])
            if updates:
                claimed = connection.execute(_CLAIM, updates).rowcount
                if claimed not in (-1, len(updates)):
                    raise RuntimeError(f"deliveries {ids} changed under their row locks")
        for outcome in outcomes.values():
            if outcome.state not in ("skipped", "sending"):
                log.info("delivery %s: %s", outcome.delivery_id, outcome.code)
        claims.sort(key=lambda c: c.delivery_id)
        return claims, outcomes

    def _plan(self, session: Session, row: Any, channel: Channel | None, template_id: str | None,
              now: datetime, lease: timedelta) -> tuple[_Claim | None, dict[str, Any]]:
        """What claiming this row means: a claim to send, or a final state without sending."""
        values: dict[str, Any] = {"b_id": row.id, "b_attempts": row.attempts + 1, "b_now": now,
                                  "b_template": template_id, "b_until": None, "b_credit": False}
        recipient = Recipient(row.wechat_openid, row.alipay_user_id, row.alipay_open_id)
        if channel is None or template_id is None:
            values.update(b_state="failed", b_code="not_configured",
                          b_error=f"no {row.channel} template for {row.kind} notices is configured")
            return None, values
        if not channel.can_reach(recipient):
            values.update(b_state="failed", b_code="no_recipient", b_error=f"the user has no {row.channel} identity")
            return None, values
        try:
            message = channel.render(NoticeView(row.notice_id, row.kind, row.settlement_no, row.content),
                                     template_id)
        except Exception as exc:  # noqa: BLE001 — rendering is pure: any error is this notice's, for good
            values.update(b_state="failed", b_code="render_error", b_error=f"{type(exc).__name__} while rendering")
            return None, values
        used = consent.take_consent(session, row.user_id, template_id)
        if used is None:
            values.update(b_state="no_consent", b_code="no_consent",
                          b_error="the user has not subscribed to this template")
            return None, values
        values.update(b_state="sending", b_credit=used == "credit", b_until=now + lease, b_code=None, b_error=None)
        give_up_at = row.give_up_at or (row.created_at + RETRY_WINDOW)
        return _Claim(row.id, values["b_attempts"], channel, row.user_id, template_id, recipient, message,
                      values["b_credit"], give_up_at), values

    # --- 3. mark --------------------------------------------------------------------------------

    def _mark_sent(self, claim: _Claim, msgid: str | None) -> Outcome:
        now = self.clock()
        params = {"b_id": claim.delivery_id, "b_fence": claim.fence, "b_msgid": msgid, "b_now": now}
        with self.sessions() as session, session.begin():
            connection = session.connection()
            marked = connection.execute(_MARK_SENT, params).rowcount
            if msgid and claim.channel.name == "wechat":
                connection.execute(_UNMATCH, params)
        log.info("delivery %s (%s): sent%s", claim.delivery_id, claim.channel.name, "" if marked else " (late)")
        return Outcome(claim.delivery_id, "sent")

    def _mark_failed(self, claim: _Claim, err: PlatformError) -> Outcome:
        now = self.clock()
        text = f"{err.code}: {err.message}"[:_ERROR_TEXT_LIMIT]
        params: dict[str, Any] = {"b_id": claim.delivery_id, "b_fence": claim.fence, "b_now": now,
                                  "b_code": err.code[:64], "b_error": text, "b_next": None}
        if err.code in NO_CONSENT_CODES.get(claim.channel.name, ()):
            params["b_state"] = "no_consent"
        elif err.kind == "permanent":
            params["b_state"] = "failed"
        else:
            # Transient, or a token error that survived the gateway's one refresh: try again later.
            decision = after_transient_failure(claim.fence, now, claim.give_up_at, self.retry_base_seconds, self.rng)
            if decision.retry:
                params.update(b_state="pending", b_next=decision.at)
            else:
                params.update(b_state="failed", b_error=f"gave up after {claim.fence} attempts: {text}"[:500])
        with self.sessions() as session, session.begin():
            marked = session.connection().execute(_MARK_FAILED, params).rowcount
            if marked:
                if params["b_state"] == "no_consent":
                    consent.platform_refused(session, claim.user_id, claim.template_id, now)
                elif claim.credit_used:
                    consent.give_back_credit(session, claim.user_id, claim.template_id, now)
        log.info("delivery %s (%s): %s after %s", claim.delivery_id, claim.channel.name, params["b_state"], err.code)
        return Outcome(claim.delivery_id, params["b_state"], err.code)

    def _mark_unknown(self, claim: _Claim, reason: str) -> Outcome:
        now = self.clock()
        with self.sessions() as session, session.begin():
            session.execute(
                update(_D).where(_FENCE, _D.c.state == "sending")
                .values(state="failed", claimed_until=None, last_error_code=OUTCOME_UNKNOWN, last_error=reason,
                        updated_at=now),
                {"b_id": claim.delivery_id, "b_fence": claim.fence},
            )
        return Outcome(claim.delivery_id, "failed", OUTCOME_UNKNOWN)


# --- the sweeper's two statements -------------------------------------------------------------


def expire_leases(session: Session, now: datetime) -> int:
    """``sending`` rows whose lease ran out (their worker died mid-send) → ``outcome_unknown``."""
    with session.begin():
        return session.execute(
            update(Delivery)
            .where(Delivery.state == "sending", Delivery.claimed_until < now)
            .values(state="failed", claimed_until=None, last_error_code=OUTCOME_UNKNOWN,
                    last_error="the worker stopped between claiming and recording the send; not resent",
                    updated_at=now)
        ).rowcount


def due_deliveries(session: Session, now: datetime, limit: int = 500,
                   fresh_before: datetime | None = None) -> list[tuple[int, int]]:
    """(id, attempts) of pending deliveries whose time has come, oldest first; never-tried ones only
    if due since ``fresh_before`` (until then the job queued at commit time is expected to send them)."""
    query = select(Delivery.id, Delivery.attempts).where(Delivery.state == "pending", Delivery.next_attempt_at <= now)
    if fresh_before is not None and fresh_before < now:
        query = query.where(or_(Delivery.attempts > 0, Delivery.next_attempt_at <= fresh_before))
    with session.begin():
        rows = session.execute(query.order_by(Delivery.next_attempt_at, Delivery.id).limit(limit))
        return [(row.id, row.attempts) for row in rows]


# --- WeChat's subscribe_msg_sent_event -------------------------------------------------------


@dataclass(frozen=True)
class SentResult:
    template_id: str
    msgid: str
    error_code: str  # "0" = delivered
    error_status: str = ""


def record_sent_results(session: Session, user_id: int, results: Iterable[SentResult], now: datetime) -> None:
    """Apply WeChat's final delivery results (inside the caller's transaction). Only the deliveries
    of ``user_id`` (the event's FromUserName) are looked at: a MsgID of another user's message is unknown."""
    for result in results:
        delivered = result.error_code == "0"
        row = session.scalars(
            select(Delivery).where(Delivery.channel == "wechat", Delivery.msgid == result.msgid,
                                   Delivery.user_id == user_id)
            .with_for_update()
        ).first()
        if row is None:
            row = _unknown_outcome_for(session, user_id, result.template_id)
            if row is None:
                log.info("sent event for an unknown msgid (template %s); ignored", result.template_id)
                continue
            log.warning("delivery %s: outcome was unknown; WeChat's sent event says it was sent", row.id)
            if row.credit_used and row.last_error_code == "timeout":
                # The timed-out attempt gave its credit back; the platform did use it.
                consent.take_back_credit(session, user_id, row.template_id, now)
            row.msgid, row.sent_at, row.claimed_until = result.msgid, row.sent_at or now, None
            row.state, row.last_error_code, row.last_error = "sent", None, None
        if delivered:
            row.confirmed_at = now
        else:
            row.state = "failed"
            row.last_error_code = f"sent_event_{result.error_code}"[:64]
            row.last_error = f"WeChat could not deliver it: {result.error_status}"[:_ERROR_TEXT_LIMIT]
        row.updated_at = now


def _unknown_outcome_for(session: Session, user_id: int, template_id: str) -> Delivery | None:
    return session.scalars(
        select(Delivery)
        .where(Delivery.user_id == user_id, Delivery.channel == "wechat", Delivery.template_id == template_id,
               Delivery.msgid.is_(None),
               or_(Delivery.state == "sending",
                   and_(Delivery.state.in_(("pending", "failed")), Delivery.last_error_code.in_(AMBIGUOUS_CODES))))
        .order_by(Delivery.id)
        .limit(1)
        .with_for_update()
    ).first()
