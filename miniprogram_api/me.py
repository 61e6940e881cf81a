"""The signed-in user: proof of identity (R21), the proven phone number, and the profile."""

from __future__ import annotations

from app.envelope import Blueprint
from app.services import identity, phones
from app.web import client_ip, domain, now, principal, rate_limited, session, user_required, user_required_with
from miniprogram_api.schemas import (
    IdentityResultSchema,
    IdentitySchema,
    MeSchema,
    PhoneProofRequestSchema,
    PhoneProofResultSchema,
    WindowCodeSchema,
)

bp = Blueprint("me", __name__, description="The signed-in user")


@bp.get("")
@user_required_with(identity.ME_BY_TOKEN, alone=True)
@bp.response(200, MeSchema)
def get_me():
    """The masked person, account balance (owners), proof and phone status, and the region policy."""
    d = domain()
    return identity.describe_me(d.pii, d.policy, principal().facts)


@bp.post("/identity")
@user_required
@rate_limited("identity")
@bp.arguments(IdentitySchema)
@bp.response(200, IdentityResultSchema)
def verify_identity(body):
    """Link this sign-in to a registry person: name, ID number and one proof (R21).

    Errors: 422 IDENTITY_NOT_PROVEN (no proof, or the platform did not confirm it; details name the
    accepted proofs), 422 IDENTITY_MISMATCH, 422 ID_NUMBER_INVALID, 503 UPSTREAM_UNAVAILABLE.
    """
    d = domain()
    return identity.verify_identity(session(), d.pii, d.policy, d.platforms, principal().id, body["name"],
                                    body["id_number"], body.get("proof"), now(), client_ip())


@bp.post("/identity/window-code")
@user_required
@rate_limited("identity")
@bp.response(201, WindowCodeSchema)
def window_code():
    """A short-lived single-use code to show at the service window, where staff link this sign-in
    after checking the ID card (R21 ``window`` proof)."""
    return identity.issue_window_code(session(), domain().pii, principal().id, now())


@bp.post("/phone")
@user_required
@rate_limited("identity")
@bp.arguments(PhoneProofRequestSchema)
@bp.response(200, PhoneProofResultSchema)
def prove_phone(body):
    """Record the mobile number the platform proves (R21): ``{wechat_code}`` or ``{alipay_response}``.

    Errors: 422 PHONE_NOT_VERIFIED, 400 VALIDATION_ERROR (neither or both given), 503.
    """
    d = domain()
    return phones.prove_phone(session(), d.pii, d.platforms, principal().id, body, now(), client_ip())
