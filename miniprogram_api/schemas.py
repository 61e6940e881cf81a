"""Marshmallow schemas shared by the mini-program blueprints (they become the OpenAPI document)."""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, fields, validate


class StrictSchema(Schema):
    class Meta:
        unknown = EXCLUDE


class MaskedPersonSchema(StrictSchema):
    person_id = fields.Integer()
    name = fields.String(metadata={"description": "masked: every character but the last is *"})
    id_number = fields.String(metadata={"description": "masked: first 3 and last 4 shown"})


class UserSchema(StrictSchema):
    id = fields.Integer()
    channel = fields.String()
    verified = fields.Boolean()


class TokenPairSchema(StrictSchema):
    access_token = fields.String()
    refresh_token = fields.String()
    token_type = fields.String()
    expires_in = fields.Integer()
    user = fields.Nested(UserSchema)


class WeChatLoginSchema(StrictSchema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=128))


class AlipayLoginSchema(StrictSchema):
    auth_code = fields.String(required=True, validate=validate.Length(min=1, max=128))


class RefreshSchema(StrictSchema):
    refresh_token = fields.String(required=True, validate=validate.Length(min=1, max=256))


class IdentitySchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=50))
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32))


class IdentityResultSchema(StrictSchema):
    verified = fields.Boolean()
    person = fields.Nested(MaskedPersonSchema)


class MePersonSchema(MaskedPersonSchema):
    insurance_type = fields.String()
    region_code = fields.String()
    status = fields.String()


class MeSchema(StrictSchema):
    user = fields.Nested(UserSchema)
    person = fields.Nested(MePersonSchema, allow_none=True)
    account = fields.Dict(allow_none=True, metadata={"description": "{balance_fen} for account owners"})
    policy = fields.Dict()
