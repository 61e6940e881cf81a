"""The signed-in user: identity verification and profile."""

from __future__ import annotations

from flask_smorest import Blueprint

from app.services import identity
from app.web import client_ip, domain, now, principal, rate_limited, session, user_required
from miniprogram_api.schemas import IdentityResultSchema, IdentitySchema, MeSchema

bp = Blueprint("me", __name__, description="The signed-in user")


@bp.get("")
@user_required
@bp.response(200, MeSchema)
def get_me():
    """The masked person, account balance (owners) and the region policy summary."""
    d = domain()
    return identity.describe_me(session(), d.pii, d.policy, principal().id)


@bp.post("/identity")
@user_required
@rate_limited("identity")
@bp.arguments(IdentitySchema)
@bp.response(200, IdentityResultSchema)
def verify_identity(body):
    """Link this sign-in to a registry person by name and ID number."""
    return identity.verify_identity(session(), domain().pii, principal().id, body["name"], body["id_number"],
                                    now(), client_ip())
