"""``/api/v1/subscriptions``: the subscribe-message consent the mini-program obtained (R15)."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate

from app.envelope import Blueprint
from app.web import domain, now, principal, rate_limited, session, user_required
from notify import consent

bp = Blueprint("subscriptions", __name__, description="Subscribe-message consent (WeChat and Alipay)")


class SubscriptionSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    channel = fields.String(required=True, validate=validate.OneOf(("wechat", "alipay")))
    mode = fields.String(required=True, validate=validate.OneOf(consent.MODES))
    # What wx.requestSubscribeMessage / my.requestSubscribeMessage returned: template id → result
    # (at most 3 templates per request on both platforms).
    results = fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=128)),
                          values=fields.String(validate=validate.OneOf(consent.RESULTS)),
                          required=True, validate=validate.Length(min=1, max=3))


class ConsentSchema(Schema):
    template_id = fields.String()
    one_time_credits = fields.Integer(metadata={"description": "one-time accepts not yet used by a push"})
    long_term = fields.String(allow_none=True, metadata={"description": "accept | reject | ban | null"})


class ConsentListSchema(Schema):
    channel = fields.String()
    items = fields.List(fields.Nested(ConsentSchema))


@bp.post("")
@user_required
@rate_limited("subscriptions")
@bp.arguments(SubscriptionSchema)
@bp.response(200, ConsentListSchema)
def record(body):
    """Record the user's choices in a subscription popup; returns their consent per template."""
    me = principal()
    return consent.record_subscriptions(session(), domain().config, me.id, me.channel, body["channel"],
                                        body["mode"], body["results"], now())


@bp.get("")
@user_required
@bp.response(200, ConsentListSchema)
def current():
    """The user's consent for each of the service's templates on their platform."""
    me = principal()
    return consent.list_subscriptions(session(), domain().config, me.id, me.channel)
