"""The insurance registry: persons, personal accounts, households, institutions.

Names, ID numbers and card numbers are stored only encrypted (``*_enc``, AES-256-GCM with a
key id) and found through HMAC blind indexes (``*_bidx``) — R17.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedMixin, IdMixin, utcnow


class Person(IdMixin, CreatedMixin, Base):
    __tablename__ = "persons"

    id_number_bidx: Mapped[str] = mapped_column(String(64), unique=True)
    id_number_enc: Mapped[str] = mapped_column(Text)
    name_enc: Mapped[str] = mapped_column(Text)
    social_card_no_enc: Mapped[str] = mapped_column(Text)
    # R21: the reserved mobile number (预留手机号), encrypted, with a blind index; optional. Not
    # unique — families reserve one phone for several persons — but indexed: a number reserved for
    # more than one person proves none of them, which linking checks (migration 0007).
    phone_enc: Mapped[str | None] = mapped_column(Text)
    phone_bidx: Mapped[str | None] = mapped_column(String(64), index=True)
    insurance_type: Mapped[str] = mapped_column(String(16))  # employee | resident
    region_code: Mapped[str] = mapped_column(String(6))
    status: Mapped[str] = mapped_column(String(16))  # active | inactive
    # Keyed digest of the registry row as last loaded: an unchanged row is not rewritten.
    source_digest: Mapped[str | None] = mapped_column(String(64))
    # The as_of of the registry snapshot that last wrote this row: an older one may not overwrite it.
    source_as_of: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint("insurance_type IN ('employee', 'resident')", name="insurance_type"),
        CheckConstraint("status IN ('active', 'inactive')", name="status"),
    )


class Account(IdMixin, CreatedMixin, Base):
    """A ledger account. ``personal`` accounts belong to a person (个人账户) and never go below
    zero; ``institution`` accounts collect what institutions are owed; the ``registry`` account
    is the counterpart of balances loaded from the insurance registry. Balance = sum of entries.

    An institution has ``CLEARING_SHARDS`` clearing accounts (``shard`` 0, 1, …; migration 0009),
    one row each: every settlement credits one of them, so settlements at one hospital do not all
    queue for the same row lock until their commit. What the institution is owed is their sum.
    """

    __tablename__ = "accounts"

    kind: Mapped[str] = mapped_column(String(16))  # personal | institution | registry
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"), unique=True)
    institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"))
    shard: Mapped[int] = mapped_column(SmallInteger, default=0, server_default="0")
    balance_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint("kind IN ('personal', 'institution', 'registry')", name="kind"),
        CheckConstraint("kind <> 'personal' OR balance_fen >= 0", name="personal_not_negative"),
        # Partial: the accounts table is one row per insured person, and only institutions' rows
        # have an institution_id (built CONCURRENTLY by migration 0009).
        Index("ux_accounts_institution_shard", "institution_id", "shard", unique=True,
              postgresql_where=text("institution_id IS NOT NULL"), sqlite_where=text("institution_id IS NOT NULL")),
    )


class Household(IdMixin, CreatedMixin, Base):
    """b is a's ``relationship`` (b is a's child), from the registry's household data (R3)."""

    __tablename__ = "households"

    a_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    b_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), index=True)
    relationship: Mapped[str] = mapped_column(String(16))

    __table_args__ = (UniqueConstraint("a_person_id", "b_person_id"),)


class Institution(IdMixin, CreatedMixin, Base):
    __tablename__ = "institutions"

    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # hospital | clinic | pharmacy
    region_code: Mapped[str] = mapped_column(String(6))
    designated: Mapped[bool] = mapped_column(default=True)
    active: Mapped[bool] = mapped_column(default=True)
    api_secret_enc: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("kind IN ('hospital', 'clinic', 'pharmacy')", name="kind"),)



