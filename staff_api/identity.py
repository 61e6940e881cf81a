"""Staff (R21): link a user to a person after checking the ID card, and update reserved phones."""

from __future__ import annotations

from marshmallow import fields, validate

from app.envelope import Blueprint
from app.services import identity, phones
from app.web import client_ip, domain, now, principal, session, staff_required
from miniprogram_api.schemas import MaskedPersonSchema, StrictSchema

bp = Blueprint("staff_identity", __name__, description="Staff: window identity links and reserved phone numbers")


class IdentityLinkRequestSchema(StrictSchema):
    id_number = fields.String(required=True, validate=validate.Length(min=1, max=32),
                              metadata={"description": "from the ID card the staff member checked"})
    link_code = fields.String(required=True, validate=validate.Length(min=1, max=16),
                              metadata={"description": "the code the user shows (POST /me/identity/window-code)"})


class IdentityLinkSchema(StrictSchema):
    user_id = fields.Integer()
    proof = fields.String()
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
@staff_required("window", "admin")
@bp.arguments(IdentityLinkRequestSchema)
@bp.response(201, IdentityLinkSchema)
def link_identity(body):
    """Link the user who showed ``link_code`` to the person of the checked ID card (audited).

    404 NOT_FOUND for an unknown, used or expired code or an ID number not in the registry.
    """
    d = domain()
    return identity.link_at_window(session(), d.pii, d.policy, principal().id, body["id_number"], body["link_code"],
                                   now(), client_ip())


@bp.post("/persons/phone")
@staff_required("window", "admin")
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
