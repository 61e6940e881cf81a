"""Where money moves: vouchers, settlements, payments, the double-entry ledger, caps, refunds.

Every movement is a journal whose entries sum to zero; an account's balance equals the sum of
its entries (checked by ``flask verify-ledger``). Rows here are never updated in place except
the running totals (balances, cap usage, refunded amounts), which the ledger can rebuild.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedMixin, IdMixin


class Voucher(IdMixin, CreatedMixin, Base):
    """A QR e-voucher (R12), stored only as a keyed hash of its code."""

    __tablename__ = "vouchers"

    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))  # the person it names
    holder_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))  # who issued it
    # Indexed (migration 0008): ending a user's identity link ends the codes they hold (R21).
    holder_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    binding_id: Mapped[int | None] = mapped_column(ForeignKey("bindings.id"))  # 亲情码
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class Settlement(IdMixin, CreatedMixin, Base):
    __tablename__ = "settlements"

    settlement_no: Mapped[str] = mapped_column(String(32), unique=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    out_settlement_no: Mapped[str] = mapped_column(String(64))
    request_hash: Mapped[str] = mapped_column(String(64))
    # Unique: a voucher is accepted once, even across processes (R12). None for a card settlement.
    voucher_id: Mapped[int | None] = mapped_column(ForeignKey("vouchers.id"), unique=True)
    # How the patient was identified: voucher (e-voucher QR) | card (social-security card, R12).
    auth_method: Mapped[str] = mapped_column(String(8), default="voucher", server_default="voucher")
    beneficiary_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), index=True)
    service_time: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(24))  # settled | partially_refunded | refunded
    total_fen: Mapped[int] = mapped_column(BigInteger)
    eligible_fen: Mapped[int] = mapped_column(BigInteger)
    own_account_fen: Mapped[int] = mapped_column(BigInteger)
    copay_fen: Mapped[int] = mapped_column(BigInteger)
    cash_fen: Mapped[int] = mapped_column(BigInteger)
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    items: Mapped[list[Any]]
    reasons: Mapped[list[Any]]
    response: Mapped[dict[str, Any]]  # the original response body, replayed for R13

    __table_args__ = (
        UniqueConstraint("institution_id", "out_settlement_no"),
        CheckConstraint("total_fen = own_account_fen + copay_fen + cash_fen", name="conserved"),
        CheckConstraint("auth_method IN ('voucher', 'card')", name="auth_method"),
        CheckConstraint("refunded_fen >= 0 AND refunded_fen <= total_fen", name="refund_bounded"),
    )


class Payment(IdMixin, Base):
    """One account's part of a settlement, in payment order (R7)."""

    __tablename__ = "payments"

    settlement_id: Mapped[int] = mapped_column(ForeignKey("settlements.id"), index=True)
    sequence: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))  # own | copay
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    owner_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    binding_id: Mapped[int | None] = mapped_column(ForeignKey("bindings.id"), index=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    refunded_fen: Mapped[int] = mapped_column(BigInteger, default=0)
    balance_after_fen: Mapped[int] = mapped_column(BigInteger)
    # Copied from the settlement so that every records query is one index range (issue 13): the
    # beneficiary's records, and a year's records (the Asia/Shanghai year of the settlement's
    # created_at), without walking past other rows through a join.
    beneficiary_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    created_year: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        UniqueConstraint("settlement_id", "sequence"),
        # An owner's deduction records are read newest first (keyset on id).
        Index("ix_payments_owner", "owner_person_id", "id"),
        Index("ix_payments_beneficiary", "beneficiary_person_id", "id"),
        Index("ix_payments_owner_year", "owner_person_id", "created_year", "id"),
        Index("ix_payments_beneficiary_year", "beneficiary_person_id", "created_year", "id"),
        CheckConstraint("amount_fen > 0", name="positive"),
        CheckConstraint("refunded_fen >= 0 AND refunded_fen <= amount_fen", name="refund_bounded"),
    )


class Refund(IdMixin, CreatedMixin, Base):
    __tablename__ = "refunds"

    refund_no: Mapped[str] = mapped_column(String(32), unique=True)  # ours, like settlement_no
    settlement_id: Mapped[int] = mapped_column(ForeignKey("settlements.id"), index=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    out_refund_no: Mapped[str] = mapped_column(String(64))
    request_hash: Mapped[str] = mapped_column(String(64))
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    cash_fen: Mapped[int] = mapped_column(BigInteger)
    cap_restored_fen: Mapped[int] = mapped_column(BigInteger)
    response: Mapped[dict[str, Any]]

    __table_args__ = (
        UniqueConstraint("institution_id", "out_refund_no"),
        CheckConstraint("amount_fen > 0", name="positive"),
    )


class RefundPart(IdMixin, Base):
    __tablename__ = "refund_parts"

    refund_id: Mapped[int] = mapped_column(ForeignKey("refunds.id"), index=True)
    payment_id: Mapped[int] = mapped_column(ForeignKey("payments.id"), index=True)
    amount_fen: Mapped[int] = mapped_column(BigInteger)
    balance_after_fen: Mapped[int] = mapped_column(BigInteger)
    # Copied from the payment and the refund (issue 13): a records page reads refund credits by
    # one index range whoever the caller is, the same plan for an owner with 200,000 payments as
    # for one with two — no join decides which rows to walk.
    owner_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    beneficiary_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    created_year: Mapped[int] = mapped_column(Integer)  # the Asia/Shanghai year of the refund

    __table_args__ = (
        Index("ix_refund_parts_owner", "owner_person_id", "id"),
        Index("ix_refund_parts_beneficiary", "beneficiary_person_id", "id"),
        Index("ix_refund_parts_owner_year", "owner_person_id", "created_year", "id"),
        Index("ix_refund_parts_beneficiary_year", "beneficiary_person_id", "created_year", "id"),
    )


class Journal(IdMixin, CreatedMixin, Base):
    """One balanced movement of money: its entries sum to zero."""

    __tablename__ = "journals"

    kind: Mapped[str] = mapped_column(String(16))  # registry | registry_sync | settlement | refund
    settlement_id: Mapped[int | None] = mapped_column(ForeignKey("settlements.id"), index=True)
    refund_id: Mapped[int | None] = mapped_column(ForeignKey("refunds.id"), index=True)
    memo: Mapped[str | None] = mapped_column(String(200))
    # registry_sync journals: the SHA-256 of the registry file and its snapshot time (as_of).
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    as_of: Mapped[datetime | None]


class LedgerEntry(IdMixin, Base):
    __tablename__ = "ledger_entries"

    journal_id: Mapped[int] = mapped_column(ForeignKey("journals.id"), index=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    amount_fen: Mapped[int] = mapped_column(BigInteger)  # + credit to the account, − debit

    __table_args__ = (Index("ix_ledger_entries_account", "account_id", "id"),)


class CapUsage(Base):
    """Co-pay paid for a beneficiary from other people's accounts in a calendar year (R8)."""

    __tablename__ = "cap_usage"

    beneficiary_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    used_fen: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (CheckConstraint("used_fen >= 0", name="not_negative"),)


class BindingUsage(Base):
    """What one binding's owner paid for its beneficiary in a calendar year (owner limits, R8)."""

    __tablename__ = "binding_usage"

    binding_id: Mapped[int] = mapped_column(ForeignKey("bindings.id"), primary_key=True)
    year: Mapped[int] = mapped_column(Integer, primary_key=True)
    paid_fen: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (CheckConstraint("paid_fen >= 0", name="not_negative"),)


class InstitutionNonce(Base):
    """Institution request nonces seen, when Redis is not configured (kept past the window)."""

    __tablename__ = "institution_nonces"

    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)
