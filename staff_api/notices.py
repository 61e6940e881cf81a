"""Staff: the push log of every notice (attempts, upstream codes, final states) and resending (R15)."""

from __future__ import annotations

from flask import g
from marshmallow import EXCLUDE, Schema, fields, validate

from app.envelope import Blueprint
from app.schema_fields import Integer
from app.web import client_ip, domain, now, principal, read_session, session, staff_required
from models.notice import DELIVERY_STATES
from notify import inbox

bp = Blueprint("staff_notices", __name__, description="Staff: notice deliveries")


class DeliveryQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    state = fields.String(validate=validate.OneOf(DELIVERY_STATES))
    channel = fields.String(validate=validate.OneOf(("wechat", "alipay")))
    settlement_no = fields.String(validate=validate.Length(min=1, max=32))
    cursor = fields.String(validate=validate.Length(max=200))
    limit = Integer(validate=validate.Range(min=1, max=100))


class ResendSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    reason = fields.String(required=True, validate=validate.Length(min=1, max=200))


class StaffDeliverySchema(Schema):
    id = fields.Integer()
    notice_id = fields.Integer()
    kind = fields.String()
    settlement_no = fields.String()
    person_id = fields.Integer()
    user_id = fields.Integer()
    channel = fields.String()
    state = fields.String(metadata={"description": "pending | sending | sent | failed | no_consent"})
    attempts = fields.Integer()
    template_id = fields.String(allow_none=True)
    last_error_code = fields.String(allow_none=True, metadata={"description": "upstream code, or "
                                    "outcome_unknown / no_consent / not_configured / timeout / http_5xx …"})
    last_error = fields.String(allow_none=True)
    msgid = fields.String(allow_none=True)
    next_attempt_at = fields.String(allow_none=True)
    give_up_at = fields.String(allow_none=True)
    claimed_until = fields.String(allow_none=True)
    sent_at = fields.String(allow_none=True)
    confirmed_at = fields.String(allow_none=True)
    created_at = fields.String()
    updated_at = fields.String(allow_none=True)


class StaffDeliveryPageSchema(Schema):
    items = fields.List(fields.Nested(StaffDeliverySchema))
    next_cursor = fields.String(allow_none=True)


@bp.get("")
@staff_required("window", "admin", "auditor")
@bp.arguments(DeliveryQuerySchema, location="query")
@bp.response(200, StaffDeliveryPageSchema)
def list_deliveries(query):
    """Push deliveries newest first, by state, channel or settlement number."""
    return inbox.list_deliveries(read_session(), state=query.get("state"), channel=query.get("channel"),
                                 settlement_no=query.get("settlement_no"), cursor=query.get("cursor"),
                                 limit=query.get("limit"))


@bp.post("/<int:delivery_id>/retry")
@staff_required("window", "admin")
@bp.arguments(ResendSchema)
@bp.response(200, StaffDeliverySchema)
def resend(body, delivery_id):
    """Push a failed, unknown-outcome or no-consent notice again (audit-logged)."""
    return inbox.retry_delivery(session(), domain().notifier, principal().id, delivery_id, body["reason"], now(),
                                client_ip(), g.get("request_id"))
