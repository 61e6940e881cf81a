"""QR e-vouchers (R12): issue one for yourself or for a family member bound to you (亲情码), render
it as PNG or SVG, and decode it when an institution scans it.

The codes have the shape of the national 医保电子凭证 (28 digits: ``424`` + random digits + the
named person's 2-digit insured province + ``0000``), but they are this service's own: a stand-in
until the service is connected to the national platform, which issues and decodes the real ones.
Only a keyed hash of a code is stored; a code is decoded by looking its hash up, so a database
leak reveals no usable code. A code expires after ``VOUCHER_TTL_SECONDS`` and is accepted once
(the settlement that uses it records the use; ``settlements.voucher_id`` is unique).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import segno
from sqlalchemy import Select, and_, bindparam, exists, insert, or_, select
from sqlalchemy.orm import Session

from app import errors, hot_sql
from app.security.id_number import PROVINCE_CODES
from app.security.pii import PiiCipher, decode_config_key
from app.services import audit
from app.services.identity import masked_person
from app.timefmt import iso
from models import Binding, Person, Suspension, Voucher

CODE_LENGTH = 28
_RANDOM_DIGITS = 19  # 424 + 19 random + 2 province + 0000 = 28; 10**19 codes, about 63 bits
_CODE = re.compile(r"424[0-9]{19}([0-9]{2})0000")
IMAGE_KINDS = {"png": "image/png", "svg": "image/svg+xml"}


@dataclass(frozen=True)
class VoucherCodec:
    """Makes codes and their stored hashes; built once at start-up from ``VOUCHER_KEY``."""

    key: bytes
    ttl_seconds: int

    @classmethod
    def from_config(cls, key_b64: str, ttl_seconds: int) -> VoucherCodec:
        return cls(decode_config_key(key_b64, name="VOUCHER_KEY"), ttl_seconds)

    def new_code(self, province: str) -> str:
        return f"424{secrets.randbelow(10**_RANDOM_DIGITS):0{_RANDOM_DIGITS}d}{province}0000"

    def code_hash(self, code: str) -> str:
        """HMAC-SHA256 of the code under VOUCHER_KEY: what the database stores and looks up."""
        return hmac.new(self.key, code.encode("ascii"), hashlib.sha256).hexdigest()


def well_formed(code: object) -> bool:
    """R12: 28 digits, ``424`` first, a known province, ``0000`` last. Checked before any look-up."""
    if not isinstance(code, str) or len(code) != CODE_LENGTH:
        return False
    match = _CODE.fullmatch(code)
    return match is not None and match.group(1) in PROVINCE_CODES


def check_usable(expires_at: datetime, used_at: datetime | None, now: datetime) -> None:
    """R12: a voucher is accepted once and only before it expires (a used one says so first)."""
    if used_at is not None:
        raise errors.VoucherUsed()
    if now >= expires_at:
        raise errors.VoucherExpired()


def issue_voucher(
    session: Session,
    pii: PiiCipher,
    codec: VoucherCodec,
    user_id: int,
    holder_person_id: int | None,
    person_id: int | None,
    now: datetime,
    ip: str | None = None,
) -> dict[str, Any]:
    """Issue a voucher naming the holder, or a beneficiary of the holder's active binding (亲情码).

    A person the holder has no binding with at all is ``NOT_FOUND`` (R16: the answer is the same
    whether that person exists or not); a binding that exists but is not active (pending,
    suspended, unbound) is ``BINDING_NOT_ACTIVE``. Suspended here is what R11 suspends for the
    holder: the binding, the pair (a suspension of any binding between the two, which rebinding does
    not lift) or the holder's co-pay use as an owner — the 亲情码 *is* that use, and under it the
    beneficiary's own account and the other owners' accounts would pay. A suspended *beneficiary*
    still gets a voucher: their own account and cash still work (R11, R12).

    Two statements (issue 13): the person named and the holder's binding with them in one read,
    then the voucher and its audit row in one write (a data-modifying CTE; two inserts on SQLite).
    """
    if holder_person_id is None:
        raise errors.Forbidden("Verify your identity first.", details={"reason": "identity_not_verified"})
    target_id = person_id if person_id is not None else holder_person_id
    with session.begin():
        connection = session.connection()
        facts = hot_sql.execute(connection, _FACTS, {"target_id": target_id, "holder_id": holder_person_id}).first()
        binding_id = None
        if target_id != holder_person_id:
            # A binding's beneficiary is a person (foreign key): no row here means no binding either.
            if facts is None or facts.binding_id is None:
                raise errors.NotFound("You have no binding with this person.")
            status = "suspended" if facts.binding_status == "active" and facts.copay_suspended else facts.binding_status
            if status != "active":
                raise errors.BindingNotActive(details={"binding_id": facts.binding_id, "status": status})
            binding_id = facts.binding_id
        if facts is None:
            raise errors.NotFound()
        if facts.status != "active":
            raise errors.BeneficiaryNotEligible(
                "The person named on the voucher is not an active insured person.", details={"reason": "inactive"})
        code = codec.new_code(facts.region_code[:2])
        expires_at = now + timedelta(seconds=codec.ttl_seconds)
        voucher = {"code_hash": codec.code_hash(code), "person_id": target_id, "holder_person_id": holder_person_id,
                   "holder_user_id": user_id, "binding_id": binding_id, "expires_at": expires_at,
                   "created_at": now}
        row = audit.values(actor_kind="user", actor_id=user_id, action="voucher.issue", at=now, ip=ip,
                           target_kind="voucher", details={"person_id": target_id, "binding_id": binding_id})
        if connection.dialect.name == "postgresql":
            hot_sql.execute(connection, _INSERT_WITH_AUDIT, {**voucher, **{f"audit_{k}": v for k, v in row.items()}})
        else:
            voucher_id = connection.execute(_INSERT, voucher).scalar_one()
            connection.execute(audit.INSERT, row | {"target_id": voucher_id})
        shown = masked_person(pii, target_id, facts.name_enc, facts.id_number_enc)
    return {"code": code, "person": shown, "expires_at": iso(expires_at), "ttl_seconds": codec.ttl_seconds}


_vouchers, _persons, _bindings = Voucher.__table__, Person.__table__, Binding.__table__
_suspensions = Suspension.__table__


def _facts() -> Select[Any]:
    """The person a voucher would name and the holder's binding with them (an active one first,
    else the latest, as before), or no row when there is no such person; ``copay_suspended`` when an
    unlifted R11 suspension stops the holder's co-pay use for that person (owner or pair scope)."""
    pair = _bindings.alias("pair")
    suspended_binding = _bindings.alias("suspended_binding")
    unlifted = _suspensions.c.lifted_at.is_(None)
    copay_suspended = or_(
        exists().where(_suspensions.c.scope == "owner", _suspensions.c.person_id == bindparam("holder_id"), unlifted),
        exists().where(and_(_suspensions.c.scope == "binding", unlifted,
                            suspended_binding.c.id == _suspensions.c.binding_id,
                            suspended_binding.c.owner_person_id == bindparam("holder_id"),
                            suspended_binding.c.beneficiary_person_id == _persons.c.id)),
    )
    binding = (select(pair.c.id)
               .where(pair.c.owner_person_id == bindparam("holder_id"), pair.c.beneficiary_person_id == _persons.c.id)
               .order_by((pair.c.status == "active").desc(), pair.c.id.desc())
               .limit(1).correlate(_persons).scalar_subquery())
    return (select(_persons.c.status, _persons.c.region_code, _persons.c.name_enc, _persons.c.id_number_enc,
                   _bindings.c.id.label("binding_id"), _bindings.c.status.label("binding_status"),
                   copay_suspended.label("copay_suspended"))
            .select_from(_persons.outerjoin(_bindings, _bindings.c.id == binding))
            .where(_persons.c.id == bindparam("target_id")))


def _insert_with_audit() -> Any:
    """PostgreSQL: the voucher and its audit row (which names the voucher's id) in ONE statement."""
    audit_table = audit.TABLE
    voucher = (insert(_vouchers).values({name: bindparam(name, type_=_vouchers.c[name].type) for name in _COLUMNS})
               .returning(_vouchers.c.id).cte("voucher"))
    names = [c.name for c in audit_table.c if c.name not in ("id", "target_id")]
    return insert(audit_table).from_select(
        [*names, "target_id"],
        select(*(bindparam(f"audit_{name}", type_=audit_table.c[name].type) for name in names), voucher.c.id),
    )


# Built once (the voucher issue is a hot path): Core statements on the tables.
_COLUMNS = ("code_hash", "person_id", "holder_person_id", "holder_user_id", "binding_id", "expires_at", "created_at")
_FACTS = _facts()
_INSERT = insert(_vouchers).returning(_vouchers.c.id)
_INSERT_WITH_AUDIT = _insert_with_audit()


def voucher_image(session: Session, codec: VoucherCodec, user_id: int, code: str, kind: str, now: datetime) -> bytes:
    """The QR image of a voucher, for the user who issued it only (anyone else: ``NOT_FOUND``)."""
    if kind not in IMAGE_KINDS:
        raise errors.NotFound()
    if not well_formed(code):
        raise errors.NotFound()
    with session.begin():
        row = session.execute(
            select(Voucher.expires_at, Voucher.used_at)
            .where(Voucher.code_hash == codec.code_hash(code), Voucher.holder_user_id == user_id)
        ).first()
    if row is None:
        raise errors.NotFound()
    check_usable(row.expires_at, row.used_at, now)
    return render_qr(code, kind)


def render_qr(code: str, kind: str) -> bytes:
    """A QR code of the digits (segno picks numeric mode: the smallest symbol), medium error correction."""
    qr = segno.make(code, error="m", micro=False)
    out = io.BytesIO()
    if kind == "png":
        qr.save(out, kind="png", scale=8, border=4)
    else:
        qr.save(out, kind="svg", scale=8, border=4, xmldecl=False, title="e-voucher")
    return out.getvalue()
