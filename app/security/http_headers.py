"""App-wide HTTP hardening: security headers, and start-up warnings about unsafe deployments.

Headers are set with ``setdefault``: a blueprint that needs another policy (the HTML console's own
CSP, a document download's ``Cache-Control``) sets its header and this leaves it alone. Every answer
under ``/api/v1`` and every answer to a request carrying credentials is ``Cache-Control: no-store``.
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
API_PREFIX = "/api/v1/"
# Headers that carry credentials: a user's or staff member's bearer token, an institution's signature.
CREDENTIAL_HEADERS = ("Authorization", "X-Inst-Code", "X-Signature")
LOOPBACK_LITERALS = frozenset({"127.0.0.1", "::1"})  # the usual spellings, known without parsing


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
    # (lower-case name, name, value) of each header every response gets unless it set its own; the
    # Content-Security-Policy depends on the response's type and is decided per response below.
    defaults = [("x-content-type-options", "X-Content-Type-Options", "nosniff"),
                ("x-frame-options", "X-Frame-Options", "DENY"),
                ("referrer-policy", "Referrer-Policy", "no-referrer"),
                ("cross-origin-resource-policy", "Cross-Origin-Resource-Policy", "same-origin")]
    if production:
        defaults.append(("strict-transport-security", "Strict-Transport-Security", HSTS))

    @app.after_request
    def _security_headers(response: Response) -> Response:
        headers = response.headers
        # One pass over the headers already set (what each ``setdefault`` would scan for again).
        present = {key.lower() for key, _value in headers.items()}
        for lower, name, value in defaults:
            if lower not in present:
                headers.add(name, value)
        if "cache-control" not in present and (
                request.path.startswith(API_PREFIX) or any(h in request.headers for h in CREDENTIAL_HEADERS)):
            # Personal data, tokens and signed answers are kept by no proxy and no browser cache. The
            # public documents (/api/openapi.json, /healthz) are left as they are.
            headers.add("Cache-Control", "no-store")
        if "content-security-policy" not in present:
            # JSON, images and files need nothing; an HTML page that did not set its own policy (the
            # Swagger UI at /api/docs loads its scripts from a CDN) is at least never framed.
            html = response.mimetype == "text/html"
            headers.add("Content-Security-Policy", HTML_FALLBACK_CSP if html else DEFAULT_CSP)
        if not production and not warned["exposed"]:
            address = request.environ.get("REMOTE_ADDR")
            if address not in LOOPBACK_LITERALS and not _is_loopback(address):
                warned["exposed"] = True
                log.warning(
                    "development mode is serving a client from another machine: development secrets under "
                    "instance/ and the platform emulator are not for real data; set APP_ENV=production"
                )
        return response
