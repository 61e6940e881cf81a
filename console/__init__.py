"""The service-window web console ``/console/`` (issue 12): pages for people at the 医保经办窗口,
calling the same services as ``staff_api``. ``init_app`` registers it on the app."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from console.views import bp
    from console.web import configure

    configure(app)
    app.register_blueprint(bp, url_prefix="/console")
