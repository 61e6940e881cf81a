"""``/api/v1/notifications``: the in-app inbox of deduction, refund and receipt notices (R15, R16)."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from app.envelope import Blueprint
from app.schema_fields import Integer
from app.web import now, principal, read_session, session, user_required
from notify import inbox

bp = Blueprint("notifications", __name__, description="Notices of account movements, with their push status")


class PageQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    cursor = fields.String(validate=validate.Length(max=200))
    limit = Integer(validate=validate.Range(min=1, max=100))


class DeliverySchema(Schema):
    channel = fields.String(metadata={"description": "wechat | alipay"})
    state = fields.String(metadata={"description": "pending | sent | failed | no_consent"})
    error = fields.String(allow_none=True, metadata={"description": "upstream or local code when not delivered"})


class NotificationSchema(Schema):
    id = fields.Integer()
    kind = fields.String(metadata={"description": "deduction | refund | receipt; binding (a binding naming "
                                                  "you changed) | identity (another account was linked to you, "
                                                  "or a link ended)"})
    settlement_no = fields.String(allow_none=True, metadata={"description": "money notices only"})
    amount_fen = fields.Integer(allow_none=True, metadata={"description": "money notices only"})
    event = fields.String(allow_none=True, metadata={
        "description": "binding notices: created | active | suspended | resumed | ended | rejected | declined; "
                       "identity notices: linked | unlinked"})
    binding_id = fields.Integer(allow_none=True, metadata={"description": "binding notices only"})
    message = fields.String(allow_none=True, metadata={"description": "what happened, in Chinese, masked (R17)"})
    balance_after_fen = fields.Integer(allow_none=True)
    beneficiary = fields.String(allow_none=True, metadata={"description": "masked name"})
    relationship = fields.String(allow_none=True)
    institution = fields.String(allow_none=True)
    created_at = fields.String()
    read_at = fields.String(allow_none=True)
    deliveries = fields.List(fields.Nested(DeliverySchema))


class NotificationPageSchema(Schema):
    items = fields.List(fields.Nested(NotificationSchema))
    next_cursor = fields.String(allow_none=True)


@bp.get("")
@user_required
@bp.arguments(PageQuerySchema, location="query")
@bp.response(200, NotificationPageSchema)
def list_notifications(query):
    """The signed-in person's notices, newest first (keyset pagination)."""
    return inbox.list_notifications(read_session(), principal().person_id, query.get("cursor"), query.get("limit"))


@bp.post("/<int:notice_id>/read")
@user_required
@bp.response(200, NotificationSchema)
def mark_read(notice_id):
    """Mark one notice read."""
    return inbox.mark_read(session(), principal().person_id, notice_id, now())
