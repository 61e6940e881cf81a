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
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
    )
    api = Api(app, spec_kwargs={"components": {"securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer"},
    }}})
    app.extensions["api"] = api

    from miniprogram_api.auth import bp as auth_bp
    from miniprogram_api.me import bp as me_bp

    api.register_blueprint(auth_bp, url_prefix="/api/v1/auth")
    api.register_blueprint(me_bp, url_prefix="/api/v1/me")
    app.register_blueprint(health)
