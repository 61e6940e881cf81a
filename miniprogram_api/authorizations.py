"""Authorization records (共济授权记录) of the bindings I am party to (R16)."""

from __future__ import annotations

from app.envelope import Blueprint
from app.i18n import request_locale
from app.services import authorizations
from app.web import principal, read_session, user_required
from miniprogram_api.binding_schemas import AuthorizationPageSchema, RecordsQuerySchema

bp = Blueprint("authorization_records", __name__, description="Authorization records")


@bp.get("/authorizations")
@user_required
@bp.arguments(RecordsQuerySchema, location="query")
@bp.response(200, AuthorizationPageSchema)
def list_authorizations(query):
    """Every change of the bindings I am party to, newest first."""
    return authorizations.list_authorization_records(read_session(), caller=principal(), locale=request_locale(),
                                                     **query)
