"""Sign-in from both platforms through the SDKs against the emulator (SPEC §5, issue 2)."""

from __future__ import annotations

from tests.helpers import bearer, random_openid, sign_in_alipay, sign_in_wechat


def error_code(response) -> str:
    return response.get_json()["error"]["code"]


def test_a_wechat_login_code_signs_in_and_gives_a_two_hour_access_token(client, sandbox):
    body = sign_in_wechat(client, sandbox)
    assert body["expires_in"] == 7200
    assert body["user"]["channel"] == "wechat"
    assert body["user"]["verified"] is False
    assert client.get("/api/v1/me", headers=bearer(body["access_token"])).status_code == 200


def test_signing_in_again_with_the_same_openid_gives_the_same_user(client, sandbox):
    openid = random_openid()
    first = sign_in_wechat(client, sandbox, openid)
    second = sign_in_wechat(client, sandbox, openid)
    assert first["user"]["id"] == second["user"]["id"]


def test_the_wechat_session_key_never_leaves_the_server(client, sandbox):
    response = client.post("/api/v1/auth/wechat", json={"code": sandbox.issue_wechat_login_code(random_openid())})
    assert "session_key" not in response.get_data(as_text=True)


def test_a_bad_wechat_code_is_login_code_invalid(client):
    response = client.post("/api/v1/auth/wechat", json={"code": "not-a-real-code"})
    assert response.status_code == 401
    assert error_code(response) == "LOGIN_CODE_INVALID"


def test_a_wechat_code_works_only_once(client, sandbox):
    code = sandbox.issue_wechat_login_code(random_openid())
    assert client.post("/api/v1/auth/wechat", json={"code": code}).status_code == 200
    again = client.post("/api/v1/auth/wechat", json={"code": code})
    assert again.status_code == 401
    assert error_code(again) == "LOGIN_CODE_INVALID"


def test_an_expired_wechat_code_is_refused(client, sandbox):
    code = sandbox.issue_wechat_login_code(random_openid())
    sandbox.advance_clock(301)
    response = client.post("/api/v1/auth/wechat", json={"code": code})
    assert response.status_code == 401
    assert error_code(response) == "LOGIN_CODE_INVALID"


def test_an_unreachable_wechat_is_upstream_unavailable_not_a_500(app, make_app, sandbox):
    offline = make_app(WECHAT_API_BASE_URL="http://127.0.0.1:9/")
    response = offline.test_client().post("/api/v1/auth/wechat", json={"code": "any"})
    assert response.status_code == 503
    assert error_code(response) == "UPSTREAM_UNAVAILABLE"


def test_an_alipay_auth_code_signs_in(client, sandbox):
    body = sign_in_alipay(client, sandbox)
    assert body["user"]["channel"] == "alipay"
    assert client.get("/api/v1/me", headers=bearer(body["access_token"])).status_code == 200


def _alipay(client, sandbox, user_id=None, open_id=None):
    code = sandbox.issue_alipay_auth_code(user_id=user_id, open_id=open_id)
    response = client.post("/api/v1/auth/alipay", json={"auth_code": code})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["user"]["id"]


def _alipay_rows():
    from sqlalchemy import select

    from app.extensions import app_session
    from models import User

    with app_session() as s, s.begin():
        return sorted(s.execute(select(User.id, User.alipay_user_id, User.alipay_open_id)
                                .where(User.channel == "alipay")).all())


def test_an_alipay_person_known_by_open_id_who_later_comes_with_a_user_id_too_keeps_one_user(client, sandbox):
    """The user row held only the open_id; a reply with both ids tried to create a second user with
    the same open_id: the unique key failed twice, a 500."""
    first = _alipay(client, sandbox, open_id="074a1b2c3d4e5f")
    assert _alipay(client, sandbox, user_id="2088000000000101", open_id="074a1b2c3d4e5f") == first
    assert _alipay(client, sandbox, open_id="074a1b2c3d4e5f") == first
    assert _alipay(client, sandbox, user_id="2088000000000101") == first
    assert _alipay_rows() == [(first, "2088000000000101", "074a1b2c3d4e5f")]


def test_an_alipay_person_known_by_user_id_who_later_comes_with_an_open_id_too_keeps_one_user(client, sandbox):
    first = _alipay(client, sandbox, user_id="2088000000000102")
    assert _alipay(client, sandbox, user_id="2088000000000102", open_id="074a1b2c3d4e60") == first
    assert _alipay(client, sandbox, open_id="074a1b2c3d4e60") == first
    assert _alipay_rows() == [(first, "2088000000000102", "074a1b2c3d4e60")]


def test_alipay_ids_held_by_two_users_sign_in_to_the_user_id_s_row_and_move_nothing(client, sandbox):
    """Two rows made before the ids were ever seen together (one by user_id, one by open_id): the
    reply with both signs in to the user_id's row; neither row's ids are taken or overwritten."""
    by_user_id = _alipay(client, sandbox, user_id="2088000000000103")
    by_open_id = _alipay(client, sandbox, open_id="074a1b2c3d4e61")
    assert _alipay(client, sandbox, user_id="2088000000000103", open_id="074a1b2c3d4e61") == by_user_id
    other = _alipay(client, sandbox, user_id="2088000000000104", open_id="074a1b2c3d4e62")
    # A later open_id for a user_id whose row already has one does not overwrite it, nor take another's.
    assert _alipay(client, sandbox, user_id="2088000000000104", open_id="074a1b2c3d4e61") == other
    assert _alipay_rows() == [(by_user_id, "2088000000000103", None), (by_open_id, None, "074a1b2c3d4e61"),
                              (other, "2088000000000104", "074a1b2c3d4e62")]


def test_a_bad_alipay_code_is_login_code_invalid(client):
    response = client.post("/api/v1/auth/alipay", json={"auth_code": "bogus"})
    assert response.status_code == 401
    assert error_code(response) == "LOGIN_CODE_INVALID"


def test_an_alipay_request_signed_with_the_wrong_key_is_refused_by_the_platform(make_app, sandbox):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.conftest import _pem_private

    wrong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app = make_app(ALIPAY_APP_PRIVATE_KEY=_pem_private(wrong))
    code = sandbox.issue_alipay_auth_code(user_id="2088000000000042")
    response = app.test_client().post("/api/v1/auth/alipay", json={"auth_code": code})
    assert response.status_code in (401, 503)
    assert response.status_code != 200


def test_an_alipay_response_with_a_bad_signature_is_not_trusted(make_app, sandbox):
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.conftest import _pem_public

    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app = make_app(ALIPAY_PUBLIC_KEY=_pem_public(impostor))
    code = sandbox.issue_alipay_auth_code(user_id="2088000000000043")
    response = app.test_client().post("/api/v1/auth/alipay", json={"auth_code": code})
    assert response.status_code == 503
    assert error_code(response) == "UPSTREAM_UNAVAILABLE"


def test_refresh_rotates_and_the_old_refresh_token_cannot_be_used_again(client, sandbox):
    first = sign_in_wechat(client, sandbox)
    rotated = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert rotated.status_code == 200
    new = rotated.get_json()
    assert new["refresh_token"] != first["refresh_token"]
    assert client.get("/api/v1/me", headers=bearer(new["access_token"])).status_code == 200


def test_reusing_a_rotated_refresh_token_revokes_the_whole_chain(client, sandbox):
    first = sign_in_wechat(client, sandbox)
    new = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}).get_json()
    reuse = client.post("/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401
    # The thief's (or the owner's) newer tokens are dead too.
    assert client.get("/api/v1/me", headers=bearer(new["access_token"])).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": new["refresh_token"]}).status_code == 401


def test_logout_revokes_the_access_token_and_its_refresh_chain(client, sandbox):
    tokens = sign_in_wechat(client, sandbox)
    assert client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"])).status_code == 204
    assert client.get("/api/v1/me", headers=bearer(tokens["access_token"])).status_code == 401
    assert client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401


def test_an_expired_access_token_is_unauthenticated(make_app, sandbox):
    app = make_app(ACCESS_TOKEN_TTL_SECONDS=-1)
    client = app.test_client()
    tokens = sign_in_wechat(client, sandbox)
    response = client.get("/api/v1/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 401
    assert error_code(response) == "UNAUTHENTICATED"


def test_no_token_is_unauthenticated(client):
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert error_code(response) == "UNAUTHENTICATED"


def test_a_staff_token_on_a_user_endpoint_is_forbidden(client, demo):
    response = client.get("/api/v1/me", headers=bearer(demo.tokens["window1"]))
    assert response.status_code == 403
    assert error_code(response) == "FORBIDDEN"


def test_login_is_rate_limited_per_ip_with_retry_after(make_app, sandbox):
    """R19: past the limit, 429 RATE_LIMITED with Retry-After."""
    app = make_app(RATE_LIMIT_PER_IP="3/60")
    client = app.test_client()
    statuses = [client.post("/api/v1/auth/wechat", json={"code": f"bad-{i}"}).status_code for i in range(3)]
    assert statuses == [401, 401, 401]
    limited = client.post("/api/v1/auth/wechat", json={"code": "bad"})
    assert limited.status_code == 429
    assert error_code(limited) == "RATE_LIMITED"
    assert int(limited.headers["Retry-After"]) >= 1


def test_behind_a_trusted_proxy_the_per_ip_limit_counts_the_forwarded_client(make_app):
    """R19 per IP: with TRUSTED_PROXIES=1 the client is the X-Forwarded-For address, not the proxy."""
    client = make_app(RATE_LIMIT_PER_IP="1/60", TRUSTED_PROXIES=1).test_client()

    def login(ip):
        return client.post("/api/v1/auth/wechat", json={"code": "bad"}, headers={"X-Forwarded-For": ip}).status_code

    assert login("203.0.113.7") == 401
    assert login("198.51.100.9") == 401
    assert login("203.0.113.7") == 429


def test_without_trusted_proxies_a_forged_forwarded_header_does_not_dodge_the_limit(make_app):
    client = make_app(RATE_LIMIT_PER_IP="1/60").test_client()
    first = client.post("/api/v1/auth/wechat", json={"code": "bad"}, headers={"X-Forwarded-For": "203.0.113.7"})
    second = client.post("/api/v1/auth/wechat", json={"code": "bad"}, headers={"X-Forwarded-For": "198.51.100.9"})
    assert (first.status_code, second.status_code) == (401, 429)
