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


class MeUserSchema(UserSchema):
    identity_proof = fields.String(allow_none=True, metadata={"description": "platform_realname | phone | window"})
    identity_proven_at = fields.String(allow_none=True)
    must_prove_identity_again = fields.Boolean(metadata={
        "description": "linked before proofs were required (R21): prove the identity again"})
    phone = fields.Dict(allow_none=True, metadata={"description": "{number (masked), proven_via, proven_at}"})


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


class IdentityProofSchema(StrictSchema):
    wechat_realname_code = fields.String(validate=validate.Length(min=1, max=256), metadata={
        "description": "platform_realname (WeChat): extraData.code from WeChat's real-name consent page; the "
                       "server runs checkrealnameinfo and needs V_OP_NM_MA and V_NM_ID_MA"})
    alipay_auth_code = fields.String(validate=validate.Length(min=1, max=128), metadata={
        "description": "platform_realname (Alipay): a my.getAuthCode code with scope auth_user; the user must be "
                       "certified (is_certified T) with this name and ID number"})
    phone = fields.Boolean(metadata={
        "description": "true: the phone proven with POST /me/phone equals the person's reserved number"})


class IdentitySchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=50))
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32))
    proof = fields.Nested(IdentityProofSchema, load_default=None, metadata={
        "description": "exactly one proof (R21). Without one, or when the platform does not confirm it: "
                       "422 IDENTITY_NOT_PROVEN, details.accepted_proofs lists what the region accepts "
                       "(window: show the code of POST /me/identity/window-code at the service window). "
                       "A proven identity with a wrong name or ID number: 422 IDENTITY_MISMATCH."})


class IdentityResultSchema(StrictSchema):
    verified = fields.Boolean()
    proof = fields.String(metadata={"description": "platform_realname | phone | window"})
    person = fields.Nested(MaskedPersonSchema)


class WindowCodeSchema(StrictSchema):
    code = fields.String(metadata={"description": "8 digits; show it at the service window (single use)"})
    expires_at = fields.String()
    ttl_seconds = fields.Integer()


class PhoneProofRequestSchema(StrictSchema):
    wechat_code = fields.String(validate=validate.Length(min=1, max=256), metadata={
        "description": "the code of the getPhoneNumber button (exchanged with getuserphonenumber)"})
    alipay_response = fields.String(validate=validate.Length(min=1, max=8192), metadata={
        "description": "res.response of my.getPhoneNumber exactly as given (JSON text with response, sign, ...)"})


class PhoneProofResultSchema(StrictSchema):
    phone = fields.String(metadata={"description": "masked, e.g. 138****1234"})
    proven_via = fields.String(metadata={"description": "wechat | alipay"})
    proven_at = fields.String()
    matches_reserved = fields.Boolean(allow_none=True, metadata={
        "description": "whether it equals the registry's reserved number (null: not verified yet or none on file). "
                       "Errors: 422 PHONE_NOT_VERIFIED (code invalid/used, response forged or refused)"})


class MePersonSchema(MaskedPersonSchema):
    insurance_type = fields.String()
    region_code = fields.String()
    status = fields.String()
    reserved_phone = fields.String(allow_none=True, metadata={"description": "masked reserved number (预留手机号)"})
    phone_matches_reserved = fields.Boolean(allow_none=True)


class MeSchema(StrictSchema):
    user = fields.Nested(MeUserSchema)
    person = fields.Nested(MePersonSchema, allow_none=True)
    account = fields.Dict(allow_none=True, metadata={"description": "{balance_fen} for account owners"})
    policy = fields.Dict()
