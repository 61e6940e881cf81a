"""What was paid (R16): deduction records, as owner or beneficiary, and annual-cap use (quota).

Two blueprints: ``bp`` at ``/api/v1/records`` (``/deductions``; ``/authorizations`` belongs to the
bindings blueprints) and ``quota_bp`` at ``/api/v1/quota``.
"""

from __future__ import annotations

from marshmallow import fields, validate

from app.envelope import Blueprint
from app.policy import shanghai_date
from app.schema_fields import Integer
from app.services import records
from app.web import domain, now, principal, read_session, user_required
from miniprogram_api.schemas import MaskedPersonSchema, StrictSchema

bp = Blueprint("deduction_records", __name__, description="Deduction records")
quota_bp = Blueprint("quota", __name__, description="Annual co-pay cap use")

_YEAR = validate.Range(min=2000, max=2100)


class DeductionQuerySchema(StrictSchema):
    role = fields.String(load_default="owner", validate=validate.OneOf(records.ROLES))
    year = Integer(load_default=None, validate=_YEAR)
    limit = Integer(load_default=None, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None, validate=validate.Length(max=200))


class InstitutionSchema(StrictSchema):
    code = fields.String()
    name = fields.String()


class DeductionSchema(StrictSchema):
    settlement_no = fields.String()
    refund_no = fields.String(allow_none=True)
    institution = fields.Nested(InstitutionSchema)
    beneficiary = fields.Nested(MaskedPersonSchema)
    owner = fields.Nested(MaskedPersonSchema)
    kind = fields.String(metadata={"description": "own | copay | refund"})
    payment_kind = fields.String(metadata={"description": "own | copay: the payment this record moved"})
    amount_fen = fields.Integer()
    balance_after_fen = fields.Integer(allow_none=True,
                                       metadata={"description": "the payer's balance; shown to the payer only"})
    service_time = fields.String()
    created_at = fields.String()
    auth_method = fields.String(metadata={"description": "how the settlement was authorised: voucher | card (R12)"})


class DeductionPageSchema(StrictSchema):
    items = fields.List(fields.Nested(DeductionSchema))
    next_cursor = fields.String(allow_none=True)


class QuotaQuerySchema(StrictSchema):
    year = Integer(load_default=None, validate=_YEAR)


class QuotaItemSchema(StrictSchema):
    beneficiary = fields.Nested(MaskedPersonSchema)
    year = fields.Integer()
    cap_fen = fields.Integer(allow_none=True)
    used_fen = fields.Integer()
    remaining_fen = fields.Integer(allow_none=True)
    as_ = fields.String(data_key="as", attribute="as", metadata={"description": "beneficiary (yourself) | owner"})
    binding_id = fields.Integer()
    relationship = fields.String()
    binding_status = fields.String()
    yearly_limit_fen = fields.Integer(allow_none=True)
    paid_by_you_fen = fields.Integer()


class QuotaSchema(StrictSchema):
    items = fields.List(fields.Nested(QuotaItemSchema))


@bp.get("/deductions")
@user_required
@bp.arguments(DeductionQuerySchema, location="query")
@bp.response(200, DeductionPageSchema)
def list_deductions(query):
    """Deductions from your account (``role=owner``) or paid for you (``role=beneficiary``), newest first."""
    return records.deductions(read_session(), domain().pii, principal().person_id, **query)


@quota_bp.get("")
@user_required
@quota_bp.arguments(QuotaQuerySchema, location="query")
@quota_bp.response(200, QuotaSchema)
def get_quota(query):
    """Annual-cap use of you and of each family member bound to you (default: this year)."""
    today = shanghai_date(now())
    d = domain()
    return records.quota(read_session(), d.pii, d.policy, principal().person_id, query["year"] or today.year, today)
