"""The current pledge text and the public key that verifies signed pledges (R4)."""

from __future__ import annotations

from app.envelope import Blueprint
from app.services.pledges import public_key_view
from app.web import domain
from miniprogram_api.binding_schemas import PledgeTextSchema, PublicKeySchema

bp = Blueprint("pledges", __name__, description="Pledge texts and the signing key")


@bp.get("/current")
@bp.response(200, PledgeTextSchema)
def current_pledge():
    """The pledge text an owner agrees to when binding, with its version and SHA-256."""
    return domain().pledges.current().view()


@bp.get("/public-key")
@bp.response(200, PublicKeySchema)
def public_key():
    """The Ed25519 public key that verifies pledge attestations offline."""
    return public_key_view(domain().pledge_signer)
