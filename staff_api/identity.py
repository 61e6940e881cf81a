"""Staff (R21): link a user to a person after checking the ID card, see and end a person's links, and
update reserved phones."""

from __future__ import annotations

from marshmallow import fields, validate

from app.envelope import Blueprint
from app.services import identity, identity_links, phones
from app.web import client_ip, domain, now, principal, session, staff_required
from miniprogram_api.binding_schemas import RequiredReasonSchema
from miniprogram_api.schemas import MaskedPersonSchema, StrictSchema

bp = Blueprint("staff_identity", __name__, description="Staff: window identity links and reserved phone numbers")

WRITE = ("window", "admin")
READ = ("window", "admin", "auditor")


class IdentityLinkRequestSchema(StrictSchema):
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32),
                              metadata={"description": "from the ID card the staff member checked"})
    link_code = fields.String(required=True, validate=validate.Length(min=1, max=16),
                              metadata={"description": "the code the user shows (POST /me/identity/window-code)"})


class IdentityLinkSchema(StrictSchema):
    user_id = fields.Integer()
    proof = fields.String()
    person = fields.Nested(MaskedPersonSchema)


class IdentityLinkSearchSchema(StrictSchema):
    """The ID number travels in a POST body, never in a URL (R17)."""

    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32))


class LinkedAccountSchema(StrictSchema):
    user_id = fields.Integer(metadata={"description": "the sign-in (GET /me shows the user their id)"})
    channel = fields.String(metadata={"description": "wechat | alipay"})
    proof = fields.String(allow_none=True, metadata={"description": "platform_realname | phone | window"})
    proven_at = fields.String(allow_none=True, metadata={"description": "when the link was proven"})
    last_login_at = fields.String(allow_none=True)
    signed_up_at = fields.String(allow_none=True, metadata={"description": "the sign-in's first sign-in"})
    phone = fields.String(allow_none=True, metadata={"description": "the number the user proved, masked"})


class LinkedAccountsSchema(StrictSchema):
    person = fields.Nested(MaskedPersonSchema)
    accounts = fields.List(fields.Nested(LinkedAccountSchema), metadata={
        "description": "the sign-ins linked to this person now, most recently signed in first (at most 50); "
                       "no openid or Alipay id"})


class EndedLinkSchema(StrictSchema):
    user_id = fields.Integer()
    channel = fields.String()
    proof = fields.String(allow_none=True, metadata={"description": "the proof the ended link rested on"})
    ended_at = fields.String()
    person = fields.Nested(MaskedPersonSchema)


class PersonPhoneRequestSchema(StrictSchema):
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32))
    phone = fields.String(required=True, validate=validate.Length(min=1, max=20),
                          metadata={"description": "mainland mobile number, 11 digits"})


class PersonPhoneSchema(StrictSchema):
    person = fields.Nested(MaskedPersonSchema)
    phone = fields.String(metadata={"description": "masked"})
    shared_with_others = fields.Boolean(metadata={
        "description": "another person reserved this number too; saved all the same (families share phones), "
                       "but it proves neither person's identity (R21): they prove it another way"})
    phone_links_ended = fields.Integer(metadata={
        "description": "sign-ins linked to this person by the phone proof whose proven number is not the new "
                       "one: unlinked now (their proof was the old number), they prove who they are again (R21)"})


@bp.post("/identity-links")
@staff_required(*WRITE)
@bp.arguments(IdentityLinkRequestSchema)
@bp.response(201, IdentityLinkSchema)
def link_identity(body):
    """Link the user who showed ``link_code`` to the person of the checked ID card (audited).

    404 NOT_FOUND for an unknown, used or expired code or an ID number not in the registry.
    """
    d = domain()
    return identity.link_at_window(session(), d.pii, d.policy, principal().id, body["id_number"], body["link_code"],
                                   now(), client_ip())


@bp.post("/identity-links/search")
@staff_required(*READ)
@bp.arguments(IdentityLinkSearchSchema)
@bp.response(200, LinkedAccountsSchema)
def search_identity_links(body):
    """The sign-ins linked to the person with this ID number: channel, proof, when, last sign-in, the
    proven phone — masked (audited, as every look-up by ID number).

    404 NOT_FOUND for an ID number not in the registry.
    """
    return identity_links.find_links(session(), domain().pii, principal(), body["id_number"], now(), client_ip())


@bp.post("/identity-links/<int:user_id>/end")
@staff_required(*WRITE)
@bp.arguments(RequiredReasonSchema)
@bp.response(200, EndedLinkSchema)
def end_identity_link(body, user_id):
    """End a sign-in's link to its person, after checking the person's ID card (audited with the reason).

    The user is unlinked as if never proven (``GET /me``: ``must_prove_identity_again``); their token
    still signs in but acts on no person, and the codes they hold stop working. The person's inbox gets
    an ``identity`` notice (``unlinked``). 404 NOT_FOUND for an unknown user; 409 INVALID_STATE for
    one not linked to a person.
    """
    return identity_links.end_link(session(), domain().pii, principal(), user_id, body["reason"], now(), client_ip())


@bp.post("/persons/phone")
@staff_required(*WRITE)
@bp.arguments(PersonPhoneRequestSchema)
@bp.response(200, PersonPhoneSchema)
def set_person_phone(body):
    """Update a person's reserved mobile number after checking the ID card (audited).

    ``shared_with_others``: the number is another person's reserved number too (a warning, not a
    refusal) — from now on it proves the identity of neither. ``phone_links_ended``: how many
    sign-ins linked by the phone proof with another number lost their link.
    """
    return phones.set_reserved_phone(session(), domain().pii, principal().id, body["id_number"], body["phone"], now(),
                                     client_ip())
