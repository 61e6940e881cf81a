"""An attacker's review of the console: holes found, each pinned by a test that failed before its fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from app.extensions import app_session
from app.services.console_auth import _keys
from models import AuditEvent
from tests.webconsole.helpers import PASSWORD, code, csrf, make_staff, post, sign_in, signed_in


def _actions(app) -> list[str]:
    with app_session() as session, session.begin():
        return list(session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


def test_a_code_of_non_ascii_digits_is_an_ordinary_failure_not_a_password_oracle(app, client):
    # "１２３４５６" (full-width) passes str.isdigit() and then made hmac.compare_digest raise
    # TypeError: with the right password the sign-in crashed (500, no failure counted), with a wrong
    # one it answered 401 — which told a guesser the password was right without any second factor.
    make_staff(app, "clerk", "window")
    for typed in ("１２３４５６", "١٢٣٤٥٦"):
        response = client.post("/console/login", data={"csrf_token": csrf(client), "username": "clerk",
                                                        "password": PASSWORD, "code": typed})
        assert response.status_code == 401
        assert "用户名、密码或动态验证码错误" in response.get_data(as_text=True)
    assert _actions(app).count("console.sign_in_failed") == 2


def test_changing_the_password_gives_this_browser_a_new_session_id(app, client):
    # A copied cookie (the staff member's own session) outlived the password change meant to end it:
    # the change ended every *other* session and kept this one, under the same id.
    signed_in(client, app, "clerk", "window")
    stolen = client.get_cookie("copay_console").value
    response = post(client, "/console/account", {"current_password": PASSWORD,
                                                 "new_password": "a much longer new password"},
                    page="/console/account")
    assert "密码已修改" in response.get_data(as_text=True)
    assert client.get("/console/").status_code == 200  # this browser carries on
    thief = app.test_client()
    thief.set_cookie("copay_console", stolen)
    assert thief.get("/console/").status_code == 302


def test_enrolling_a_new_totp_secret_ends_the_other_sessions_and_rotates_this_one(app, client):
    import re

    secret = signed_in(client, app, "clerk", "window")
    stolen = client.get_cookie("copay_console").value
    other = app.test_client()
    assert sign_in(other, "clerk", secret, at=datetime.now(UTC) + timedelta(seconds=30)).status_code == 303
    page = client.get("/console/account/totp").get_data(as_text=True)
    new_secret = re.search(r'<span class="mono">([A-Z2-7]{32})</span>', page).group(1)
    done = post(client, "/console/account/totp", {"password": PASSWORD, "code": code(new_secret)},
                page="/console/account/totp")
    assert 'id="totp-enrolled"' in done.get_data(as_text=True)
    assert client.get("/console/").status_code == 200
    assert other.get("/console/").status_code == 302
    thief = app.test_client()
    thief.set_cookie("copay_console", stolen)
    assert thief.get("/console/").status_code == 302


def test_ipv6_addresses_of_one_network_share_one_lock_out_key():
    # Keyed by the full address, one client with a /64 (what a single home or cloud host gets) had
    # 2^64 fresh keys: spraying passwords across accounts never met the per-address lock.
    hmac = "0" * 64
    assert _keys(hmac, "2001:db8:1:2::1")[1] == _keys(hmac, "2001:db8:1:2:ffff:ffff:ffff:fffe")[1]
    assert _keys(hmac, "2001:db8:1:2::1")[1] != _keys(hmac, "2001:db8:1:3::1")[1]
    assert _keys(hmac, "::ffff:10.0.0.1")[1] == _keys(hmac, "10.0.0.1")[1] == "ip:10.0.0.1"
    assert _keys(hmac, "unknown")[1] == "ip:unknown"


def test_spraying_from_one_ipv6_network_locks_it(app, client):
    secret = make_staff(app, "clerk", "window")
    for attempt in range(5):
        sign_in(client, f"guess{attempt}", secret, ip=f"2001:db8:7::{attempt + 1:x}")
    assert "锁定" in sign_in(client, "clerk", secret, ip="2001:db8:7::99").get_data(as_text=True)
    assert sign_in(client, "clerk", secret, ip="2001:db8:8::1").status_code == 303


def test_a_pdf_document_may_be_framed_by_the_console_itself(app, client):
    # The binding page shows a PDF proof in an <iframe>; the view said X-Frame-Options SAMEORIGIN but
    # the console's CSP said frame-ancestors 'none', which wins in every current browser.
    from app.services import documents

    signed_in(client, app, "clerk", "window")
    from models import StaffUser

    with app_session() as session, session.begin():
        staff = session.scalar(select(StaffUser).where(StaffUser.username == "clerk"))
        principal = type("P", (), {"kind": "staff", "id": staff.id, "role": "window", "person_id": None})()
    import io

    with app_session() as session:
        view, _new = documents.upload_document(session, app.config["DOCUMENT_DIR"], app.config["MAX_DOCUMENT_BYTES"],
                                               principal, io.BytesIO(b"%PDF-1.4\n%%EOF\n"), datetime.now(UTC))
    response = client.get(f"/console/documents/{view['id']}")
    assert response.status_code == 200
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in csp and "frame-ancestors 'none'" not in csp
    assert response.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Disposition"].startswith("inline")


# --- every staff route, each role: the whole table, so a new route cannot be added without a row ------

W, A, R = "window", "admin", "auditor"
ANY = (W, A, R)
CONSOLE_ROUTES = {  # (method, path): roles allowed; every other signed-in role gets 403
    ("GET", "/console/"): ANY, ("GET", "/console/reviews"): ANY, ("GET", "/console/bindings/1"): ANY,
    ("POST", "/console/bindings/1/approve"): (W, A), ("POST", "/console/bindings/1/reject"): (W, A),
    ("POST", "/console/bindings/1/unbind"): (W, A), ("GET", "/console/bindings/1/certificate"): ANY,
    ("GET", "/console/attestations/1"): ANY, ("GET", "/console/documents/1"): ANY,
    ("GET", "/console/window-binding"): (W, A), ("POST", "/console/window-binding"): (W, A),
    ("GET", "/console/persons"): ANY, ("POST", "/console/persons"): ANY,
    ("GET", "/console/persons/phone"): (W, A), ("POST", "/console/persons/phone"): (W, A),
    ("GET", "/console/identity-links"): (W, A), ("POST", "/console/identity-links"): (W, A),
    ("POST", "/console/identity-links/1/end"): (W, A),
    ("GET", "/console/suspensions"): ANY, ("POST", "/console/suspensions"): (A,),
    ("POST", "/console/suspensions/1/lift"): (A,),
    ("GET", "/console/filings"): ANY, ("POST", "/console/filings"): (W, A),
    ("GET", "/console/certifications"): ANY, ("POST", "/console/certifications"): (W, A),
    ("GET", "/console/deliveries"): ANY, ("POST", "/console/deliveries/1/resend"): (W, A),
    ("GET", "/console/audit"): (A, R),
    ("GET", "/console/account"): ANY, ("POST", "/console/account"): ANY,
    ("GET", "/console/account/totp"): ANY, ("POST", "/console/account/totp"): ANY,
    ("GET", "/console/no-such-page"): ANY, ("POST", "/console/logout"): ANY,
}
STAFF_API_ROUTES = {
    ("POST", "/api/v1/staff/bindings"): (W, A), ("GET", "/api/v1/staff/bindings"): ANY,
    ("POST", "/api/v1/staff/bindings/search"): ANY, ("GET", "/api/v1/staff/bindings/1"): ANY,
    ("GET", "/api/v1/staff/bindings/1/pledge"): ANY, ("GET", "/api/v1/staff/bindings/1/authorizations"): ANY,
    ("POST", "/api/v1/staff/bindings/1/approve"): (W, A), ("POST", "/api/v1/staff/bindings/1/reject"): (W, A),
    ("POST", "/api/v1/staff/bindings/1/unbind"): (W, A),
    ("POST", "/api/v1/staff/suspensions"): (A,), ("GET", "/api/v1/staff/suspensions"): ANY,
    ("POST", "/api/v1/staff/suspensions/1/lift"): (A,),
    ("POST", "/api/v1/staff/offsite-filings"): (W, A), ("POST", "/api/v1/staff/chronic-certifications"): (W, A),
    ("POST", "/api/v1/staff/identity-links"): (W, A), ("POST", "/api/v1/staff/persons/phone"): (W, A),
    ("POST", "/api/v1/staff/identity-links/search"): ANY, ("POST", "/api/v1/staff/identity-links/1/end"): (W, A),
    ("GET", "/api/v1/staff/notices"): ANY, ("POST", "/api/v1/staff/notices/1/retry"): (W, A),
    ("GET", "/api/v1/staff/audit-log"): (A, R),
}


def _rules(app, prefix: str) -> set[tuple[str, str]]:
    return {(method, rule.rule) for rule in app.url_map.iter_rules() if rule.rule.startswith(prefix)
            for method in rule.methods - {"HEAD", "OPTIONS"} if rule.endpoint not in ("console.static",)}



def test_the_role_tables_name_every_console_and_staff_api_route(app):
    def pattern(path: str) -> str:
        import re
        return re.sub(r"/1(?=/|$)", "/<id>", path).replace("/no-such-page", "/<path:_anything>")

    def rule_pattern(rule: str) -> str:
        import re
        return re.sub(r"<int:\w+>", "<id>", rule)

    assert {(m, rule_pattern(p)) for m, p in _rules(app, "/console")} == \
        {(m, pattern(p)) for m, p in CONSOLE_ROUTES} | {("GET", "/console/login"), ("POST", "/console/login")}
    assert {(m, rule_pattern(p)) for m, p in _rules(app, "/api/v1/staff")} == \
        {(m, pattern(p)) for m, p in STAFF_API_ROUTES}


def test_every_console_route_refuses_the_roles_it_does_not_name(app):
    for role in ANY:
        browser = app.test_client()
        signed_in(browser, app, f"staff-{role}", role)
        for (method, path), allowed in sorted(CONSOLE_ROUTES.items(), key=lambda item: item[0][1] == "/console/logout"):
            if method == "GET":
                response = browser.get(path)
            else:
                response = post(browser, path, {}, page="/console/account")
            assert (response.status_code == 403) is (role not in allowed), (role, method, path, response.status_code)


def test_every_staff_api_route_refuses_the_roles_it_does_not_name(app, client, demo):
    from tests.helpers import bearer

    for who, role in (("window1", W), ("admin1", A), ("auditor1", R)):
        for (method, path), allowed in STAFF_API_ROUTES.items():
            response = client.open(path, method=method, json={} if method == "POST" else None,
                                   headers=bearer(demo.tokens[who]))
            assert (response.status_code == 403) is (role not in allowed), (role, method, path, response.status_code)


def test_signing_in_over_a_session_ends_the_one_before(app, client):
    # A shared window PC: the next clerk signs in without the first signing out. The first session
    # was dropped from the cookie but stayed open on the server for anyone who had copied its id.
    signed_in(client, app, "first", "window")
    copied = client.get_cookie("copay_console").value
    second = make_staff(app, "second", "window")
    assert sign_in(client, "second", second).status_code == 303
    thief = app.test_client()
    thief.set_cookie("copay_console", copied)
    assert thief.get("/console/").status_code == 302
    assert client.get("/console/").status_code == 200


def test_an_audit_filter_of_unicode_digits_is_ignored_not_a_crash(app, client):
    # "²" passes str.isdigit() but int() refuses it: the audit page answered 500.
    signed_in(client, app, "viewer", "auditor")
    for typed in ("²", "１２"):
        assert client.get("/console/audit", query_string={"actor_id": typed}).status_code == 200
