"""Suspensions for violations (R11): admins suspend and lift; every staff role can look them up."""

from __future__ import annotations

from app.envelope import Blueprint
from app.services import suspensions
from app.web import client_ip, domain, now, principal, read_session, session, staff_required
from miniprogram_api.binding_schemas import (
    ReasonSchema,
    SuspendRequestSchema,
    SuspensionPageSchema,
    SuspensionQuerySchema,
    SuspensionSchema,
)

bp = Blueprint("staff_suspensions", __name__, description="Staff: suspensions")


@bp.post("")
@staff_required("admin")
@bp.arguments(SuspendRequestSchema)
@bp.response(201, SuspensionSchema)
def suspend(body):
    """Suspend an owner's co-pay use, one binding, or a beneficiary, with a reason."""
    return suspensions.suspend_copay(session(), pii=domain().pii, caller=principal(), now=now(), ip=client_ip(),
                                     **body)


@bp.post("/<int:suspension_id>/lift")
@staff_required("admin")
@bp.arguments(ReasonSchema)
@bp.response(200, SuspensionSchema)
def lift(body, suspension_id):
    """Lift a suspension; a suspended binding becomes active again unless it was unbound."""
    return suspensions.lift_suspension(session(), pii=domain().pii, caller=principal(), suspension_id=suspension_id,
                                       reason=body["reason"], now=now(), ip=client_ip())


@bp.get("")
@staff_required("window", "admin", "auditor")
@bp.arguments(SuspensionQuerySchema, location="query")
@bp.response(200, SuspensionPageSchema)
def list_suspensions(query):
    """Suspensions, newest first (``active=true`` for those in force)."""
    return suspensions.list_suspensions(read_session(), pii=domain().pii, **query)
