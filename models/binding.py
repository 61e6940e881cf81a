"""Family bindings and everything that decides whether one may pay (R1–R6, R10, R11, R16).

Nothing here is ever deleted: a binding's history is its authorization events; suspensions,
filings and certifications end by a date or a ``lifted_at``/``revoked_at``, never by a DELETE.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedMixin, IdMixin

LIVE_BINDING_STATES = ("pending_review", "pending_consent", "active", "suspended")
_LIVE_SQL = "status IN ('pending_review', 'pending_consent', 'active', 'suspended')"


class Binding(IdMixin, CreatedMixin, Base):
    """The owner's account may pay for the beneficiary. ``relationship`` is what the
    beneficiary is to the owner (``child``: the beneficiary is the owner's child)."""

    __tablename__ = "bindings"

    owner_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    beneficiary_person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), index=True)
    relationship: Mapped[str] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(8))  # wechat | alipay | window
    status: Mapped[str] = mapped_column(String(16))
    effective_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    yearly_limit_fen: Mapped[int | None] = mapped_column(BigInteger)
    created_by_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_by_staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))
    relationship_confirmed: Mapped[bool] = mapped_column(default=False)

    __table_args__ = (
        CheckConstraint(
            "status IN ('pending_review', 'pending_consent', 'active', 'suspended', 'unbound', 'rejected')",
            name="status",
        ),
        CheckConstraint("yearly_limit_fen IS NULL OR yearly_limit_fen >= 0", name="limit_not_negative"),
        # At most one live binding per pair, whatever races happen (R5: no duplicates).
        Index(
            "uq_bindings_live_pair", "owner_person_id", "beneficiary_person_id", unique=True,
            postgresql_where=text(_LIVE_SQL), sqlite_where=text(_LIVE_SQL),
        ),
        Index("ix_bindings_owner_status", "owner_person_id", "status"),
    )


class Pledge(IdMixin, CreatedMixin, Base):
    """The signed attestation of an e-signed pledge (R4): ``record`` is the canonical record and
    ``signature`` the server's Ed25519 signature over it."""

    __tablename__ = "pledges"

    binding_id: Mapped[int] = mapped_column(ForeignKey("bindings.id"), unique=True)
    version: Mapped[str] = mapped_column(String(32))
    text_sha256: Mapped[str] = mapped_column(String(64))
    record: Mapped[dict[str, Any]]
    signature: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str] = mapped_column(String(32))


class Document(IdMixin, CreatedMixin, Base):
    """A proof document; the bytes live under DOCUMENT_DIR addressed by SHA-256 (R17)."""

    __tablename__ = "documents"

    sha256: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # jpeg | png | pdf
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    uploader_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    uploader_person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"))
    uploader_staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))

    __table_args__ = (
        # One row per (uploader, file): an upload of the same bytes returns the first row.
        Index("uq_documents_person_sha256", "uploader_person_id", "sha256", unique=True),
        Index("uq_documents_staff_sha256", "uploader_staff_id", "sha256", unique=True),
    )


class BindingDocument(Base):
    __tablename__ = "binding_documents"

    binding_id: Mapped[int] = mapped_column(ForeignKey("bindings.id"), primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id"), primary_key=True, index=True)


class AuthorizationEvent(IdMixin, Base):
    """共济授权记录: one row per state change of a binding, with actor and reason (R5, R16)."""

    __tablename__ = "authorization_events"

    binding_id: Mapped[int] = mapped_column(ForeignKey("bindings.id"))
    event: Mapped[str] = mapped_column(String(32))
    # owner | beneficiary (actor_id: their user id) | staff (staff id) | system
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    channel: Mapped[str] = mapped_column(String(8))  # wechat | alipay | window | system
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime]

    # Records are read newest first per binding (keyset on id).
    __table_args__ = (Index("ix_authorization_events_binding", "binding_id", "id"),)


class Suspension(IdMixin, CreatedMixin, Base):
    """R11: an owner's co-pay use (all their bindings), one binding, or a beneficiary."""

    __tablename__ = "suspensions"

    scope: Mapped[str] = mapped_column(String(16))  # owner | binding | beneficiary
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"), index=True)
    binding_id: Mapped[int | None] = mapped_column(ForeignKey("bindings.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime]
    lifted_at: Mapped[datetime | None]
    created_by_staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"))
    lifted_by_staff_id: Mapped[int | None] = mapped_column(ForeignKey("staff_users.id"))

    __table_args__ = (
        CheckConstraint("scope IN ('owner', 'binding', 'beneficiary')", name="scope"),
        CheckConstraint(
            "(scope = 'binding' AND binding_id IS NOT NULL) OR (scope <> 'binding' AND person_id IS NOT NULL)",
            name="target",
        ),
    )


class OffsiteFiling(IdMixin, CreatedMixin, Base):
    """异地就医备案 (R10): valid on inclusive Asia/Shanghai dates for a region prefix."""

    __tablename__ = "offsite_filings"

    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), index=True)
    region_prefix: Mapped[str] = mapped_column(String(6))
    valid_from: Mapped[date]
    valid_to: Mapped[date]
    created_by_staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"))
    revoked_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("valid_from <= valid_to", name="dates"),)


class ChronicCertification(IdMixin, CreatedMixin, Base):
    """慢性病 certification (R8: raises the annual cap by ``chronic_extra_fen``)."""

    __tablename__ = "chronic_certifications"

    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), index=True)
    disease_code: Mapped[str] = mapped_column(String(32))
    valid_from: Mapped[date]
    valid_to: Mapped[date]
    created_by_staff_id: Mapped[int] = mapped_column(ForeignKey("staff_users.id"))
    revoked_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("valid_from <= valid_to", name="dates"),
        UniqueConstraint("person_id", "disease_code", "valid_from"),
    )
