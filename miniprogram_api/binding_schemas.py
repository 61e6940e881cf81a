"""Schemas of bindings, pledges, proof documents, authorization records, suspensions and the audit
log (SPEC §5), shared by the mini-program and the staff blueprints. Times go out as ISO 8601 in
Asia/Shanghai (+08:00, R20)."""

from __future__ import annotations

from typing import Any

from flask_smorest.fields import Upload
from marshmallow import fields, validate

from app.schema_fields import Fen, Id, Integer
from app.timefmt import iso
from miniprogram_api.schemas import MaskedPersonSchema, StrictSchema

STATUSES = ("pending_review", "pending_consent", "active", "suspended", "unbound", "rejected")


class ShanghaiDateTime(fields.DateTime):
    """An aware UTC datetime shown as ISO 8601 with the +08:00 offset (R20)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return iso(value)


# --- in -------------------------------------------------------------------------------------------


class BeneficiaryInSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=50))
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32))
    social_card_no = fields.String(required=True, validate=validate.Length(min=1, max=32))


class PledgeAgreementSchema(StrictSchema):
    version = fields.String(required=True, validate=validate.Length(min=1, max=32))
    sha256 = fields.String(required=True, validate=validate.Length(min=1, max=64))
    agreed = fields.Boolean(required=True, metadata={"description": "must be true"})


class BindRequestSchema(StrictSchema):
    beneficiary = fields.Nested(BeneficiaryInSchema, required=True)
    relationship = fields.String(required=True, validate=validate.Length(min=1, max=16),
                                 metadata={"description": "what the beneficiary is to the owner"})
    proof_document_ids = fields.List(Id(strict=True), load_default=list,
                                     validate=validate.Length(max=10))
    pledge = fields.Nested(PledgeAgreementSchema, required=True)


class OwnerInSchema(StrictSchema):
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32))


class WindowBindRequestSchema(BindRequestSchema):
    owner = fields.Nested(OwnerInSchema, required=True)


class ReasonSchema(StrictSchema):
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))


class RequiredReasonSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))


class YearlyLimitSchema(StrictSchema):
    yearly_limit_fen = Fen(required=True, allow_none=True, strict=True,
                                      metadata={"description": "fen per calendar year; null removes the limit"})


class PageQuerySchema(StrictSchema):
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))
    limit = Integer(load_default=None, validate=validate.Range(min=1, max=100))


class BindingListQuerySchema(PageQuerySchema):
    role = fields.String(load_default=None, validate=validate.OneOf(("owner", "beneficiary")))
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))


class StaffBindingQuerySchema(PageQuerySchema):
    status = fields.String(load_default=None, validate=validate.OneOf(STATUSES))


class StaffBindingSearchSchema(StaffBindingQuerySchema):
    """ID numbers travel in a POST body, never in a URL (URLs end up in proxy and access logs, R17)."""

    owner_id_number = fields.String(load_default=None, validate=validate.Length(min=1, max=32))
    beneficiary_id_number = fields.String(load_default=None, validate=validate.Length(min=1, max=32))


class RecordsQuerySchema(PageQuerySchema):
    binding_id = Id(load_default=None)


class UploadSchema(StrictSchema):
    file = Upload(required=True, metadata={"description": "JPEG, PNG or PDF, at most 5 MB"})


class SuspendRequestSchema(StrictSchema):
    owner_id_number = fields.String(load_default=None, validate=validate.Length(min=1, max=32))
    binding_id = Id(load_default=None, strict=True)
    beneficiary_id_number = fields.String(load_default=None, validate=validate.Length(min=1, max=32))
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500))


class SuspensionQuerySchema(PageQuerySchema):
    active = fields.Boolean(load_default=None)


class AuditQuerySchema(PageQuerySchema):
    action = fields.String(load_default=None, validate=validate.Length(max=64))
    actor_kind = fields.String(load_default=None, validate=validate.Length(max=16))
    actor_id = Id(load_default=None)
    target_kind = fields.String(load_default=None, validate=validate.Length(max=32))
    target_id = Id(load_default=None)
    # Issue 12: the same date range as the console's audit page (inclusive Asia/Shanghai dates).
    since = fields.Date(load_default=None, metadata={"description": "from this Asia/Shanghai date, inclusive"})
    until = fields.Date(load_default=None, metadata={"description": "up to this Asia/Shanghai date, inclusive"})


# --- out ------------------------------------------------------------------------------------------


class DocumentSchema(StrictSchema):
    id = fields.Integer()
    sha256 = fields.String()
    kind = fields.String(metadata={"description": "jpeg | png | pdf"})
    size_bytes = fields.Integer()
    created_at = ShanghaiDateTime()


class DocumentRefSchema(StrictSchema):
    id = fields.Integer()
    sha256 = fields.String()
    kind = fields.String()


class BindingSchema(StrictSchema):
    id = fields.Integer()
    status = fields.String(metadata={"description": " | ".join(STATUSES)})
    relationship = fields.String()
    channel = fields.String(metadata={"description": "wechat | alipay | window"})
    owner = fields.Nested(MaskedPersonSchema)
    beneficiary = fields.Nested(MaskedPersonSchema)
    effective_at = ShanghaiDateTime(allow_none=True)
    ended_at = ShanghaiDateTime(allow_none=True)
    yearly_limit_fen = fields.Integer(allow_none=True)
    created_at = ShanghaiDateTime()
    relationship_confirmed = fields.Boolean()
    suspended = fields.Boolean(metadata={"description": "R11 stops this binding from paying"})
    owner_eligible = fields.Boolean(metadata={
        "description": "R1/R11: false when the owner is no longer an active eligible owner (who pays nothing)"})
    owner_ineligible_reason = fields.String(allow_none=True, metadata={
        "description": "inactive | not_employee_insurance | outside_province, or null"})
    role = fields.String(metadata={"description": "the caller's part: owner | beneficiary (users only)"})
    documents = fields.List(fields.Nested(DocumentRefSchema))


class BindingPageSchema(StrictSchema):
    items = fields.List(fields.Nested(BindingSchema))
    next_cursor = fields.String(allow_none=True)


class PledgeTextSchema(StrictSchema):
    version = fields.String()
    language = fields.String()
    text = fields.String()
    sha256 = fields.String()


class PublicKeySchema(StrictSchema):
    algorithm = fields.String()
    key_id = fields.String()
    public_key_pem = fields.String()
    public_key_b64 = fields.String()
    canonical_form = fields.String()
    signature_encoding = fields.String()


class PledgeRecordSchema(StrictSchema):
    binding_id = fields.Integer()
    version = fields.String()
    sha256 = fields.String()
    key_id = fields.String()
    record = fields.Dict(metadata={"description": "the signed attestation, as stored"})
    signature = fields.String()
    verified = fields.Boolean()
    redacted = fields.List(fields.String(), metadata={
        "description": "record fields withheld from this caller (verify with the full record at the window)"})


class AuthorizationRecordSchema(StrictSchema):
    id = fields.Integer()
    binding_id = fields.Integer()
    event = fields.String()
    actor = fields.Dict(metadata={"description": '{"kind": owner|beneficiary|staff|system, "id"?: staff id}'})
    channel = fields.String()
    reason = fields.String(allow_none=True, metadata={
        "description": "as written; a suspension's or a lift's reason only for the person suspended (a pair "
                       "suspension: both parties) — the other party reads a standard text in the request's "
                       "language instead (R11, R16)"})
    at = ShanghaiDateTime()
    role = fields.String()
    details = fields.Dict()


class AuthorizationPageSchema(StrictSchema):
    items = fields.List(fields.Nested(AuthorizationRecordSchema))
    next_cursor = fields.String(allow_none=True)


class SuspensionSchema(StrictSchema):
    id = fields.Integer()
    scope = fields.String(metadata={"description": "owner | binding | beneficiary"})
    binding_id = fields.Integer(allow_none=True)
    person = fields.Nested(MaskedPersonSchema, allow_none=True)
    reason = fields.String()
    starts_at = ShanghaiDateTime()
    lifted_at = ShanghaiDateTime(allow_none=True)
    created_by_staff_id = fields.Integer()
    lifted_by_staff_id = fields.Integer(allow_none=True)
    active = fields.Boolean()
    affected_binding_ids = fields.List(fields.Integer())


class SuspensionPageSchema(StrictSchema):
    items = fields.List(fields.Nested(SuspensionSchema))
    next_cursor = fields.String(allow_none=True)


class AuditEventSchema(StrictSchema):
    id = fields.Integer()
    at = ShanghaiDateTime()
    actor = fields.Dict()
    action = fields.String()
    target = fields.Dict(allow_none=True)
    details = fields.Dict()
    ip = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True)


class AuditPageSchema(StrictSchema):
    items = fields.List(fields.Nested(AuditEventSchema))
    next_cursor = fields.String(allow_none=True)
