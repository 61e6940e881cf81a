"""Window bindings, review (approve/reject), unbinding and binding look-ups for staff (R3–R5, R16)."""

from __future__ import annotations

from app.envelope import Blueprint
from app.services import authorizations, bindings
from app.web import client_ip, domain, now, principal, rate_limited, read_session, session, staff_required
from miniprogram_api.binding_schemas import (
    AuthorizationPageSchema,
    BindingPageSchema,
    BindingSchema,
    PageQuerySchema,
    PledgeRecordSchema,
    ReasonSchema,
    RequiredReasonSchema,
    StaffBindingQuerySchema,
    StaffBindingSearchSchema,
    WindowBindRequestSchema,
)

bp = Blueprint("staff_bindings", __name__, description="Staff: bindings")

WRITE = ("window", "admin")
READ = ("window", "admin", "auditor")


@bp.post("")
@staff_required(*WRITE)
@rate_limited("binding")
@bp.arguments(WindowBindRequestSchema)
@bp.response(201, BindingSchema)
def bind_at_window(body):
    """Create an active window binding; the owner signs the pledge at the window."""
    d = domain()
    return bindings.bind_member_at_window(
        session(), pii=d.pii, policy=d.policy, pledges=d.pledges, signer=d.pledge_signer, caller=principal(),
        owner_id_number=body["owner"]["id_number"], beneficiary=body["beneficiary"],
        relationship=body["relationship"], proof_document_ids=body["proof_document_ids"], pledge=body["pledge"],
        now=now(), ip=client_ip(),
    )


@bp.get("")
@staff_required(*READ)
@bp.arguments(StaffBindingQuerySchema, location="query")
@bp.response(200, BindingPageSchema)
def list_bindings(query):
    """All bindings newest first, or those in one status (``status=pending_review``: the review queue)."""
    return bindings.list_bindings(session(), pii=domain().pii, caller=principal(), now=now(),
                                  province=domain().policy.province, **query)


@bp.post("/search")
@staff_required(*READ)
@bp.arguments(StaffBindingSearchSchema)
@bp.response(200, BindingPageSchema)
def search(body):
    """Find bindings by the owner's or the beneficiary's ID number (sent in the body; audit-logged)."""
    return bindings.list_bindings(session(), pii=domain().pii, caller=principal(), now=now(), ip=client_ip(),
                                  province=domain().policy.province,
                                  **body)


@bp.get("/<int:binding_id>")
@staff_required(*READ)
@bp.response(200, BindingSchema)
def get_binding(binding_id):
    """One binding with its proof documents."""
    return bindings.get_binding(read_session(), pii=domain().pii, caller=principal(), binding_id=binding_id,
                                province=domain().policy.province)


@bp.get("/<int:binding_id>/pledge")
@staff_required(*READ)
@bp.response(200, PledgeRecordSchema)
def get_pledge(binding_id):
    """The binding's signed pledge attestation, verified now (the whole record: each read is audit-logged)."""
    return bindings.get_pledge(session(), signer=domain().pledge_signer, caller=principal(), binding_id=binding_id,
                               now=now(), ip=client_ip())


@bp.get("/<int:binding_id>/authorizations")
@staff_required(*READ)
@bp.arguments(PageQuerySchema, location="query")
@bp.response(200, AuthorizationPageSchema)
def list_authorizations(query, binding_id):
    """The binding's authorization records, newest first."""
    return authorizations.list_binding_records_for_staff(read_session(), binding_id=binding_id, **query)


@bp.post("/<int:binding_id>/approve")
@staff_required(*WRITE)
@bp.arguments(ReasonSchema)
@bp.response(200, BindingSchema)
def approve(body, binding_id):
    """Approve a binding waiting for review, after checking its proofs."""
    d = domain()
    return bindings.approve_binding(session(), pii=d.pii, policy=d.policy, caller=principal(), binding_id=binding_id,
                                    reason=body["reason"], now=now(), ip=client_ip())


@bp.post("/<int:binding_id>/reject")
@staff_required(*WRITE)
@bp.arguments(RequiredReasonSchema)
@bp.response(200, BindingSchema)
def reject(body, binding_id):
    """Reject a binding waiting for review, with the reason the owner will read."""
    return bindings.reject_binding(session(), pii=domain().pii, caller=principal(), binding_id=binding_id,
                                   reason=body["reason"], now=now(), ip=client_ip())


@bp.post("/<int:binding_id>/unbind")
@staff_required(*WRITE)
@bp.arguments(RequiredReasonSchema)
@bp.response(200, BindingSchema)
def unbind(body, binding_id):
    """End a binding at the window."""
    return bindings.unbind_member(session(), pii=domain().pii, caller=principal(), binding_id=binding_id,
                                  reason=body["reason"], now=now(), ip=client_ip())
