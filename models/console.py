"""The service-window console's server-side sessions and sign-in lock-outs (issue 12)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedMixin, IdMixin


class ConsoleSession(IdMixin, CreatedMixin, Base):
    """One signed-in console session. The cookie carries a random id; only its SHA-256 is stored,
    so a database read does not hand out sessions. Ending it (logout, password change, idle or
    absolute timeout) is final: an old cookie replayed later finds an ended row."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"))
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime]  # absolute end (8 h after sign-in)
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(16))  # logout | idle | absolute | password | totp | guessing
    ip: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_console_sessions_staff_id", "staff_id"),)


class ConsoleLockout(Base):
    """Failed sign-ins counted per key (``user:<username>`` or ``ip:<address>``) with back-off."""

    __tablename__ = "console_lockouts"

    key: Mapped[str] = mapped_column(String(160), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None]
    updated_at: Mapped[datetime]
