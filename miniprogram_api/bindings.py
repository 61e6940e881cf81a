"""Family bindings for the signed-in owner and beneficiary (R1–R5, R8, R16)."""

from __future__ import annotations

from app.envelope import Blueprint
from app.services import bindings
from app.web import client_ip, domain, now, principal, rate_limited, session, user_required
from miniprogram_api.binding_schemas import (
    BindingListQuerySchema,
    BindingPageSchema,
    BindingSchema,
    BindRequestSchema,
    PledgeRecordSchema,
    ReasonSchema,
    YearlyLimitSchema,
)

bp = Blueprint("bindings", __name__, description="Bind, confirm, unbind family members; owner limits")


@bp.post("")
@user_required
@rate_limited("binding")
@bp.arguments(BindRequestSchema)
@bp.response(201, BindingSchema)
def bind(body):
    """Bind a family member to my personal account, signing the pledge.

    Where the region's ``phone_check`` is ``required`` (Wenshan), my platform-proven phone
    (``POST /me/phone``) must equal my reserved number: else 422 PHONE_NOT_VERIFIED or
    PHONE_MISMATCH (update the reserved number at the service window).
    """
    d = domain()
    return bindings.bind_member(
        session(), pii=d.pii, policy=d.policy, pledges=d.pledges, signer=d.pledge_signer, caller=principal(),
        beneficiary=body["beneficiary"], relationship=body["relationship"],
        proof_document_ids=body["proof_document_ids"], pledge=body["pledge"], now=now(), ip=client_ip(),
    )


@bp.get("")
@user_required
@bp.arguments(BindingListQuerySchema, location="query")
@bp.response(200, BindingPageSchema)
def list_bindings(query):
    """The bindings I am party to, as owner and as beneficiary, newest first."""
    return bindings.list_bindings(session(), pii=domain().pii, caller=principal(), now=now(),
                                  province=domain().policy.province, **query)


@bp.get("/<int:binding_id>")
@user_required
@bp.response(200, BindingSchema)
def get_binding(binding_id):
    """One binding I am party to, with its proof documents."""
    return bindings.get_binding(session(), pii=domain().pii, caller=principal(), binding_id=binding_id,
                                province=domain().policy.province)


@bp.patch("/<int:binding_id>")
@user_required
@bp.arguments(YearlyLimitSchema)
@bp.response(200, BindingSchema)
def set_yearly_limit(body, binding_id):
    """Set or clear (null) my yearly limit for this beneficiary (owner, R8)."""
    d = domain()
    return bindings.set_yearly_limit(session(), pii=d.pii, policy=d.policy, caller=principal(), binding_id=binding_id,
                                     yearly_limit_fen=body["yearly_limit_fen"], now=now(), ip=client_ip())


@bp.post("/<int:binding_id>/unbind")
@user_required
@bp.arguments(ReasonSchema)
@bp.response(200, BindingSchema)
def unbind(body, binding_id):
    """End a binding (owner); later expenses are no longer paid from my account."""
    return bindings.unbind_member(session(), pii=domain().pii, caller=principal(), binding_id=binding_id,
                                  reason=body["reason"], now=now(), ip=client_ip())


@bp.post("/<int:binding_id>/confirm")
@user_required
@bp.response(200, BindingSchema)
def confirm(binding_id):
    """Confirm, as the beneficiary, a binding that waits for my consent (R5)."""
    d = domain()
    return bindings.confirm_binding(session(), pii=d.pii, policy=d.policy, caller=principal(), binding_id=binding_id,
                                    now=now(), ip=client_ip())


@bp.post("/<int:binding_id>/decline")
@user_required
@bp.arguments(ReasonSchema)
@bp.response(200, BindingSchema)
def decline(body, binding_id):
    """Decline, as the beneficiary, a binding that waits for my consent (R5, R21): it becomes
    ``rejected``, an authorization record is written and the owner is notified."""
    return bindings.decline_binding(session(), pii=domain().pii, caller=principal(), binding_id=binding_id,
                                    reason=body.get("reason"), now=now(), ip=client_ip())


@bp.get("/<int:binding_id>/pledge")
@user_required
@bp.response(200, PledgeRecordSchema)
def get_pledge(binding_id):
    """The binding's signed pledge attestation, verified now (R4)."""
    return bindings.get_pledge(session(), signer=domain().pledge_signer, caller=principal(), binding_id=binding_id,
                               now=now())
