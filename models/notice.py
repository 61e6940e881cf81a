"""Deduction notices (R15): the outbox row, its per-channel deliveries, and consent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedMixin, IdMixin


class Notice(IdMixin, CreatedMixin, Base):
    """One notice to one person, written in the same transaction as the money movement."""

    __tablename__ = "notices"

    kind: Mapped[str] = mapped_column(String(16))  # deduction | refund | receipt
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    settlement_id: Mapped[int] = mapped_column(ForeignKey("settlements.id"), index=True)
    refund_id: Mapped[int | None] = mapped_column(ForeignKey("refunds.id"))
    # "s<settlement id>" or "r<refund id>": the money movement this notice reports.
    movement_key: Mapped[str] = mapped_column(String(32))
    settlement_no: Mapped[str] = mapped_column(String(32))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    balance_after_fen: Mapped[int | None] = mapped_column(BigInteger)
    content: Mapped[dict[str, Any]]  # masked, ready to render on either platform
    read_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("kind IN ('deduction', 'refund', 'receipt')", name="kind"),
        Index("ix_notices_person", "person_id", "id"),
        # Exactly one notice per (money movement, person, kind): R15.
        UniqueConstraint("movement_key", "person_id", "kind"),
    )


class Delivery(IdMixin, CreatedMixin, Base):
    """Pushing one notice on one channel; ``(notice_id, channel)`` is the idempotent send key."""

    __tablename__ = "deliveries"

    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id"))
    channel: Mapped[str] = mapped_column(String(8))  # wechat | alipay
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_until: Mapped[datetime | None]
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    msgid: Mapped[str | None] = mapped_column(String(64))
    sent_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("notice_id", "channel"),
        CheckConstraint("state IN ('pending', 'sending', 'sent', 'failed', 'no_consent')", name="state"),
        Index("ix_deliveries_due", "state", "next_attempt_at"),
    )


class Consent(IdMixin, CreatedMixin, Base):
    """Subscribe-message consent of one user for one template (R15)."""

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
