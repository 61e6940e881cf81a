"""The service-window web console ``/console/`` (issue 12): pages for people at the 医保经办窗口,
calling the same services as ``staff_api``. ``init_app`` registers it on the app."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from console.views import bp
    from console.web import configure

    configure(app)
    if app.config.get("TESTING") and app.config.get("APP_ENV") != "production":
        from app.services.console_auth import use_cheap_hashing_for_tests

        use_cheap_hashing_for_tests()
    app.register_blueprint(bp, url_prefix="/console")
