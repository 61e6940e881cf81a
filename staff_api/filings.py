"""Off-site filings (R10) and chronic-disease certifications (R8), recorded at the service window."""

from __future__ import annotations

from marshmallow import fields, validate

from app.envelope import Blueprint
from app.services import filings
from app.web import client_ip, domain, now, principal, session, staff_required
from miniprogram_api.schemas import MaskedPersonSchema, StrictSchema

bp = Blueprint("staff_filings", __name__, description="Staff: off-site filings and chronic-disease certifications")


class OffsiteFilingRequestSchema(StrictSchema):
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32))
    region_prefix = fields.String(required=True, metadata={"description": "2-digit province or 4-digit prefecture"})
    valid_from = fields.Date(required=True, metadata={"description": "inclusive, Asia/Shanghai"})
    valid_to = fields.Date(required=True, metadata={"description": "inclusive, Asia/Shanghai"})


class ChronicCertificationRequestSchema(StrictSchema):
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32))
    disease_code = fields.String(required=True, validate=validate.Length(min=1, max=32))
    valid_from = fields.Date(required=True)
    valid_to = fields.Date(required=True)


class OffsiteFilingSchema(StrictSchema):
    id = fields.Integer()
    person = fields.Nested(MaskedPersonSchema)
    region_prefix = fields.String()
    valid_from = fields.String()
    valid_to = fields.String()
    created_at = fields.String()


class ChronicCertificationSchema(StrictSchema):
    id = fields.Integer()
    person = fields.Nested(MaskedPersonSchema)
    disease_code = fields.String()
    valid_from = fields.String()
    valid_to = fields.String()
    created_at = fields.String()


@bp.post("/offsite-filings")
@staff_required("window", "admin")
@bp.arguments(OffsiteFilingRequestSchema)
@bp.response(201, OffsiteFilingSchema)
def create_offsite_filing(body):
    """Record an off-site treatment filing (异地就医备案) for an insured person."""
    return filings.file_offsite(session(), domain().pii, principal().id, body["id_number"], body["region_prefix"],
                                body["valid_from"], body["valid_to"], now(), client_ip())


@bp.post("/chronic-certifications")
@staff_required("window", "admin")
@bp.arguments(ChronicCertificationRequestSchema)
@bp.response(201, ChronicCertificationSchema)
def create_chronic_certification(body):
    """Record a chronic-disease certification (raises the annual co-pay cap)."""
    return filings.certify_chronic(session(), domain().pii, principal().id, body["id_number"], body["disease_code"],
                                   body["valid_from"], body["valid_to"], now(), client_ip())
