"""App-wide HTTP hardening: security headers, and start-up warnings about unsafe deployments.

Headers are set with ``setdefault``: a blueprint that needs another policy (the HTML console's own
CSP, a QR image) sets its header and this leaves it alone.
"""

from __future__ import annotations

import ipaddress
import logging

from flask import Flask, Response, request

log = logging.getLogger(__name__)

# JSON and files need no scripts, styles, frames or fetches of their own.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'"
HTML_FALLBACK_CSP = "frame-ancestors 'none'"
HSTS = "max-age=31536000; includeSubDomains"


def _is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return address == "localhost"


def init_app(app: Flask) -> None:
    production = app.config.get("APP_ENV") == "production"
    if production and not app.config.get("TRUSTED_PROXIES"):
        log.warning(
            "production without TRUSTED_PROXIES: behind a reverse proxy every client shares the proxy's "
            "address, so per-IP rate limits and pledge/audit addresses see one client; set TRUSTED_PROXIES "
            "to the number of proxies in front (0 only if clients connect directly)"
        )
    warned = {"exposed": False}

    @app.after_request
    def _security_headers(response: Response) -> Response:
        headers = response.headers
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("X-Frame-Options", "DENY")
        # JSON, images and files need nothing; an HTML page that did not set its own policy (the
        # Swagger UI at /api/docs loads its scripts from a CDN) is at least never framed.
        html = response.mimetype == "text/html"
        headers.setdefault("Content-Security-Policy", HTML_FALLBACK_CSP if html else DEFAULT_CSP)
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("Cross-Origin-Resource-Policy", "same-origin")
        if production:
            headers.setdefault("Strict-Transport-Security", HSTS)
        if not production and not warned["exposed"] and not _is_loopback(request.environ.get("REMOTE_ADDR")):
            warned["exposed"] = True
            log.warning(
                "development mode is serving a client from another machine: development secrets under "
                "instance/ and the platform emulator are not for real data; set APP_ENV=production"
            )
        return response
