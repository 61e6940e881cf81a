"""QR e-vouchers (R12): issue one for yourself or a bound family member (亲情码), and show it."""

from __future__ import annotations

from flask import Response
from marshmallow import fields, validate

from app.envelope import Blueprint
from app.schema_fields import Id
from app.services import vouchers
from app.web import client_ip, domain, now, principal, rate_limited, session, user_required
from miniprogram_api.schemas import MaskedPersonSchema, StrictSchema

bp = Blueprint("vouchers", __name__, description="QR e-vouchers (this service's stand-in for 医保电子凭证)")


class VoucherRequestSchema(StrictSchema):
    person_id = Id(strict=True, allow_none=True, load_default=None,
                               metadata={"description": "a bound family member; omit for yourself"})


class VoucherSchema(StrictSchema):
    code = fields.String(metadata={"description": "28 digits, shown as a QR code; accepted once"})
    person = fields.Nested(MaskedPersonSchema)
    expires_at = fields.String()
    ttl_seconds = fields.Integer()


@bp.post("")
@user_required
@rate_limited("voucher")
@bp.arguments(VoucherRequestSchema)
@bp.response(201, VoucherSchema)
def issue_voucher(body):
    """Issue an e-voucher naming you, or a family member actively bound to you (亲情码)."""
    caller = principal()
    return vouchers.issue_voucher(session(), domain().pii, domain().money.vouchers, caller.id, caller.person_id,
                                  body["person_id"], now(), client_ip())


class VoucherImageRequestSchema(StrictSchema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=64),
                         metadata={"description": "the voucher code from POST /vouchers"})


# The code travels in the body, never in the URL: a URL ends up in access logs, proxy logs and
# caches, and whoever reads one could settle with the voucher (so there is no GET /vouchers/{code}/qr.png;
# see docs/settlement.md).
@bp.post("/qr.png")
@user_required
@bp.arguments(VoucherImageRequestSchema)
@bp.response(200, content_type="image/png")
def voucher_png(body):
    """The voucher as a PNG QR code (only for the user who issued it); the code goes in the body."""
    return _image(body["code"], "png")


@bp.post("/qr.svg")
@user_required
@bp.arguments(VoucherImageRequestSchema)
@bp.response(200, content_type="image/svg+xml")
def voucher_svg(body):
    """The voucher as an SVG QR code (only for the user who issued it); the code goes in the body."""
    return _image(body["code"], "svg")


def _image(code: str, kind: str) -> Response:
    data = vouchers.voucher_image(session(), domain().money.vouchers, principal().id, code, kind, now())
    return Response(data, mimetype=vouchers.IMAGE_KINDS[kind], headers={"Cache-Control": "no-store"})
