"""Deduction notices (R15): the outbox row, its per-channel deliveries, consent, and consent reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedMixin, IdMixin

DELIVERY_STATES = ("pending", "sending", "sent", "failed", "no_consent")


class Notice(IdMixin, CreatedMixin, Base):
    """One notice to one person, written in the same transaction as the money movement."""

    __tablename__ = "notices"

    # deduction | refund | receipt (money); binding | identity (R21: no money, no settlement)
    kind: Mapped[str] = mapped_column(String(16))
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    settlement_id: Mapped[int | None] = mapped_column(ForeignKey("settlements.id"), index=True)
    refund_id: Mapped[int | None] = mapped_column(ForeignKey("refunds.id"))
    # "s<settlement id>" or "r<refund id>": the money movement this notice reports.
    movement_key: Mapped[str] = mapped_column(String(32))
    settlement_no: Mapped[str | None] = mapped_column(String(32))
    amount_fen: Mapped[int | None] = mapped_column(BigInteger)
    balance_after_fen: Mapped[int | None] = mapped_column(BigInteger)
    content: Mapped[dict[str, Any]]  # masked, ready to render on either platform
    read_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("kind IN ('deduction', 'refund', 'receipt', 'binding', 'identity')", name="kind"),
        Index("ix_notices_person", "person_id", "id"),
        # Exactly one notice per (money movement, person, kind): R15.
        UniqueConstraint("movement_key", "person_id", "kind"),
    )


class Delivery(IdMixin, CreatedMixin, Base):
    """Pushing one notice on one channel; ``(notice_id, channel)`` is the idempotent send key.

    ``pending`` → (claimed with a lease) ``sending`` → ``sent`` | ``failed`` | ``no_consent``, or
    back to ``pending`` with a later ``next_attempt_at`` after a transient error. A ``sending`` row
    whose lease ran out is never sent again automatically (the platform may already have shown it):
    it becomes ``failed`` with ``last_error_code = 'outcome_unknown'`` (see notify/delivery.py).
    """

    __tablename__ = "deliveries"

    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id"))
    channel: Mapped[str] = mapped_column(String(8))  # wechat | alipay
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    # Incremented by every claim; the claim's value fences the later mark (a stale worker cannot
    # overwrite the outcome of a newer attempt).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    # Transient failures are retried until then (R15: for up to 24 h), then the delivery fails.
    give_up_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    template_id: Mapped[str | None] = mapped_column(String(128))
    # The latest attempt was paid with a one-time subscription credit (given back if the
    # platform refused to send; taken back if a timed-out send turns out to have been sent).
    credit_used: Mapped[bool] = mapped_column(default=False)
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    msgid: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None]
    # WeChat's subscribe_msg_sent_event confirmed the message reached the user.
    confirmed_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("notice_id", "channel"),
        CheckConstraint("state IN ('pending', 'sending', 'sent', 'failed', 'no_consent')", name="state"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
        Index("ix_deliveries_msgid", "msgid"),
        Index("ix_deliveries_user_state", "user_id", "state"),
    )


class Consent(IdMixin, CreatedMixin, Base):
    """Subscribe-message consent of one user for one template (R15).

    ``one_time_credits``: accepts of a one-time template not yet used by a send.
    ``long_term``: the latest standing choice: ``accept`` (a long-term subscription: every send is
    allowed), ``reject`` (switched off, in a long-term popup or in the user's settings), ``ban``
    (the platform banned the template), or None.
    """

    __tablename__ = "consents"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    channel: Mapped[str] = mapped_column(String(8))
    template_id: Mapped[str] = mapped_column(String(128))
    one_time_credits: Mapped[int] = mapped_column(Integer, default=0)
    long_term: Mapped[str | None] = mapped_column(String(8))  # accept | reject | ban
    updated_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("user_id", "template_id"),
        CheckConstraint("one_time_credits >= 0", name="credits_not_negative"),
    )


class ConsentReport(IdMixin, CreatedMixin, Base):
    """One report of a subscription choice, from the mini-program (``client``) or from WeChat's
    message push (``wechat_event``).

    WeChat reports each popup choice twice — to the mini-program, which posts it to
    ``/subscriptions``, and by a ``subscribe_msg_popup_event`` push — so a one-time accept from one
    source is paired with the same accept from the other (``matched``) and counted once.
    """

    __tablename__ = "consent_reports"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    channel: Mapped[str] = mapped_column(String(8))
    template_id: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))  # client | wechat_event
    event: Mapped[str] = mapped_column(String(16))  # popup | change
    result: Mapped[str] = mapped_column(String(8))  # accept | reject | ban | filter
    mode: Mapped[str | None] = mapped_column(String(16))  # one_time | long_term (client reports)
    matched: Mapped[bool] = mapped_column(default=False)
    # For pushed events: a key of (openid, CreateTime, event, position, template) — WeChat repeats
    # a push it got no timely answer to, and a repeat must not add a second credit.
    event_key: Mapped[str | None] = mapped_column(String(64), unique=True)

    __table_args__ = (
        CheckConstraint("source IN ('client', 'wechat_event')", name="source"),
        Index("ix_consent_reports_lookup", "user_id", "template_id", "created_at"),
    )
