"""The audit log: every staff action and security-relevant event, newest first."""

from __future__ import annotations

from app.envelope import Blueprint
from app.services import authorizations
from app.web import read_session, staff_required
from miniprogram_api.binding_schemas import AuditPageSchema, AuditQuerySchema

bp = Blueprint("staff_audit", __name__, description="Staff: audit log")


@bp.get("")
@staff_required("admin", "auditor")
@bp.arguments(AuditQuerySchema, location="query")
@bp.response(200, AuditPageSchema)
def audit_log(query):
    """Audit events, newest first, optionally narrowed by action, actor or target."""
    return authorizations.list_audit_log(read_session(), **query)
