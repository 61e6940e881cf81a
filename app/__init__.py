"""The application factory."""

from __future__ import annotations

import logging

from flask import Flask

from app import envelope
from app.config import ROOT, Config


def create_app(config: Config | None = None) -> Flask:
    """Build the service: config, extensions, domain singletons, blueprints, errors, CLI."""
    config = config or Config.from_env()
    app = envelope.ServiceFlask(__name__, instance_path=str(config_instance_path()))
    app.session_interface = envelope.CookieSessions()
    app.config.from_mapping(config.to_flask())
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if config.TRUSTED_PROXIES > 0:
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Client IPs (rate limits R19, pledge records R4, audit) come from the trusted proxies only.
        hops = config.TRUSTED_PROXIES
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]

    from app import logs

    logs.init_app(app)
    from app.security import http_headers

    http_headers.init_app(app)

    from app.extensions import db, init_rate_limiter, init_redis

    db.init_app(app)
    from flask_migrate import Migrate

    Migrate(app, db, directory=str(ROOT / "migrations"))
    init_redis(app)
    init_rate_limiter(app)
    from app import replica

    replica.init_app(app)
    app.teardown_appcontext(db.close_request_session)

    from app.wiring import init_domain

    init_domain(app)

    from app import contract, i18n
    from app.errors_http import register_error_handlers
    from app.routes import register_blueprints

    i18n.init_app(app)  # error messages in Chinese, or English on request (issue 10)
    contract.install_converters(app)  # <int:…> ids bounded 1 … 2^63 − 1, before any route
    register_blueprints(app)
    register_error_handlers(app)
    contract.init_app(app)  # JSON body checks; the finished OpenAPI document

    from app import metrics

    metrics.init_app(app)

    from app.cli import register_cli

    register_cli(app)
    logging.getLogger(__name__).debug("app created for region %s", config.REGION_CODE)
    return app


def config_instance_path() -> str:
    from app.config import INSTANCE_DIR

    return str(INSTANCE_DIR)
