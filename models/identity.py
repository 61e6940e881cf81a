"""Who signs in: mini-program users (per platform identity), their tokens, and staff."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, CreatedMixin, IdMixin


class User(IdMixin, CreatedMixin, Base):
    """One platform identity (a WeChat openid or an Alipay user). After identity verification
    it is linked to a registry person; one person may sign in from both platforms."""

    __tablename__ = "users"

    channel: Mapped[str] = mapped_column(String(8))  # wechat | alipay
    wechat_openid: Mapped[str | None] = mapped_column(String(64), unique=True)
    wechat_unionid: Mapped[str | None] = mapped_column(String(64), index=True)
    # The WeChat session_key never leaves the server (it decrypts client data); kept encrypted.
    wechat_session_key_enc: Mapped[str | None] = mapped_column(Text)
    alipay_user_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    alipay_open_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"), index=True)
    verified_at: Mapped[datetime | None]
    last_login_at: Mapped[datetime | None]
    # R21: how the link to ``person_id`` was proven (platform_realname | phone | window) and when.
    identity_proof: Mapped[str | None] = mapped_column(String(24))
    identity_proven_at: Mapped[datetime | None]
    # Set by migration 0003 on users linked before proofs existed: their link was dropped and they
    # must prove who they are again (the README tells operators how to handle them).
    unproven_person_id: Mapped[int | None] = mapped_column(ForeignKey("persons.id"))
    # R21: the mobile number the platform proved for this user (encrypted, with a blind index),
    # how (wechat | alipay) and when.
    phone_enc: Mapped[str | None] = mapped_column(Text)
    phone_bidx: Mapped[str | None] = mapped_column(String(64))
    phone_proof: Mapped[str | None] = mapped_column(String(8))
    phone_proven_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("channel IN ('wechat', 'alipay')", name="channel"),)


class IdentityLinkCode(IdMixin, CreatedMixin, Base):
    """A short-lived, single-use code a user shows at the service window (R21 ``window`` proof).

    Only its keyed hash is stored; staff enter the code with the ID number after checking the ID card.
    """

    __tablename__ = "identity_link_codes"

    # Not unique: 8 digits repeat over time; only a live (unused, unexpired) code is ever looked up.
    code_hash: Mapped[str] = mapped_column(String(64), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)


class PhoneProof(IdMixin, CreatedMixin, Base):
    """One platform phone proof as received (R21): its digest is unique, so a captured Alipay
    response or a WeChat code can prove a number once, for one user."""

    __tablename__ = "phone_proofs"

    digest: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    channel: Mapped[str] = mapped_column(String(8))


class AuthToken(IdMixin, CreatedMixin, Base):
    """Opaque bearer tokens, stored as SHA-256 hashes. ``chain_id`` ties an access token to the
    refresh-token chain it came from, so revoking a chain revokes its access tokens too."""

    __tablename__ = "auth_tokens"

    kind: Mapped[str] = mapped_column(String(8))  # access | refresh
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    chain_id: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]  # refresh tokens: when it was rotated
    revoked_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("kind IN ('access', 'refresh')", name="kind"),
        Index("ix_auth_tokens_chain_id", "chain_id"),
        Index("ix_auth_tokens_user_id", "user_id"),
    )


class StaffUser(IdMixin, CreatedMixin, Base):
    __tablename__ = "staff_users"

    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # window | admin | auditor
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(default=True)
    # The API token's end (STAFF_TOKEN_TTL_SECONDS after it was issued) and its revocation; a token
    # without an end is not accepted.
    token_expires_at: Mapped[datetime | None]
    token_revoked_at: Mapped[datetime | None]
    # Issue 12: the console's sign-in — argon2id password hash (PHC string), the TOTP secret
    # encrypted like personal data, and the last TOTP time step used (a code is accepted once).
    password_hash: Mapped[str | None] = mapped_column(Text)
    totp_secret_enc: Mapped[str | None] = mapped_column(Text)
    totp_last_step: Mapped[int | None] = mapped_column(BigInteger)
    password_changed_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("role IN ('window', 'admin', 'auditor')", name="role"),)

