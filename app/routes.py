"""Blueprint registration, the OpenAPI document, and the health endpoints."""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify
from flask_smorest import Api
from sqlalchemy import text

from app.extensions import db, redis_client

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():
    """The process is alive."""
    return jsonify(status="ok")


@health.get("/readyz")
def readyz():
    """The database and, when configured, Redis answer."""
    checks: dict[str, str] = {}
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001 — any failure means not ready
        checks["database"] = f"error: {type(exc).__name__}"
    redis = redis_client()
    if redis is not None:
        try:
            redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if ready else "not_ready", checks=checks), 200 if ready else 503


def register_blueprints(app: Flask) -> None:
    app.config.update(
        API_TITLE="Family co-pay (门诊共济) service",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/static/swagger-ui/",  # vendored swagger-ui-dist, no CDN (app/static/swagger-ui)
    )
    api = Api(app, spec_kwargs={"components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer"},
    }}})
    app.extensions["api"] = api

    from miniprogram_api.auth import bp as auth_bp
    from miniprogram_api.me import bp as me_bp

    api.register_blueprint(auth_bp, url_prefix="/api/v1/auth")
    api.register_blueprint(me_bp, url_prefix="/api/v1/me")

    # Issue 3: bindings, pledges, proof documents, authorization records; the staff side.
    from miniprogram_api.authorizations import bp as authorization_records_bp
    from miniprogram_api.bindings import bp as binding_bp
    from miniprogram_api.documents import bp as documents_bp
    from miniprogram_api.pledges import bp as pledges_bp
    from staff_api.audit import bp as staff_audit_bp
    from staff_api.bindings import bp as staff_bindings_bp
    from staff_api.suspensions import bp as staff_suspensions_bp

    api.register_blueprint(binding_bp, url_prefix="/api/v1/bindings")
    api.register_blueprint(documents_bp, url_prefix="/api/v1/documents")
    api.register_blueprint(pledges_bp, url_prefix="/api/v1/pledges")
    api.register_blueprint(authorization_records_bp, url_prefix="/api/v1/records")
    api.register_blueprint(staff_bindings_bp, url_prefix="/api/v1/staff/bindings")
    api.register_blueprint(staff_suspensions_bp, url_prefix="/api/v1/staff/suspensions")
    api.register_blueprint(staff_audit_bp, url_prefix="/api/v1/staff/audit-log")

    # Issue 5: notices (R15): consent, the inbox, WeChat's message push, the staff push log.
    from miniprogram_api.notifications import bp as notifications_bp
    from miniprogram_api.subscriptions import bp as subscriptions_bp
    from notify.callbacks import bp as wechat_callbacks_bp
    from staff_api.notices import bp as staff_notices_bp

    api.register_blueprint(subscriptions_bp, url_prefix="/api/v1/subscriptions")
    api.register_blueprint(notifications_bp, url_prefix="/api/v1/notifications")
    api.register_blueprint(wechat_callbacks_bp, url_prefix="/api/v1/callbacks/wechat")
    api.register_blueprint(staff_notices_bp, url_prefix="/api/v1/staff/notices")

    # Issue 4: e-vouchers, the institution API (settle, refund), deduction records and quota, filings.
    from institution_api.settlements import bp as institution_settlements_bp
    from miniprogram_api.records import bp as deduction_records_bp
    from miniprogram_api.records import quota_bp
    from miniprogram_api.vouchers import bp as vouchers_bp
    from staff_api.filings import bp as staff_filings_bp

    api.register_blueprint(vouchers_bp, url_prefix="/api/v1/vouchers")
    api.register_blueprint(deduction_records_bp, url_prefix="/api/v1/records")
    api.register_blueprint(quota_bp, url_prefix="/api/v1/quota")
    api.register_blueprint(institution_settlements_bp, url_prefix="/api/v1/institution")
    api.register_blueprint(staff_filings_bp, url_prefix="/api/v1/staff")

    # Issue 9: proof of identity and phones (R21), staff side.
    from staff_api.identity import bp as staff_identity_bp

    api.register_blueprint(staff_identity_bp, url_prefix="/api/v1/staff")
    app.register_blueprint(health)

    # Issue 12: the service-window web console (HTML for people, same services as staff_api).
    import console

    console.init_app(app)
