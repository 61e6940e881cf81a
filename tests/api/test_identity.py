"""Identity verification and GET /me (R17, R18, issue 2 §6)."""

from __future__ import annotations

from app.demo import CHILD, OWNER
from tests.helpers import bearer, sign_in_wechat


def verify(client, token, name, id_number):
    return client.post("/api/v1/me/identity", json={"name": name, "id_number": id_number}, headers=bearer(token))


def test_identity_links_the_user_and_me_shows_masked_person_balance_and_policy(client, sandbox, demo):
    token = sign_in_wechat(client, sandbox)["access_token"]
    response = verify(client, token, "张伟", OWNER)
    assert response.status_code == 200
    me = client.get("/api/v1/me", headers=bearer(token)).get_json()
    assert me["user"]["verified"] is True
    assert me["person"]["name"] == "*伟"
    assert me["person"]["id_number"] == OWNER[:3] + "*" * 11 + OWNER[-4:]
    assert me["account"] == {"balance_fen": 350000}
    assert me["policy"]["region"] == "532600"
    assert me["policy"]["annual_cap_fen"] == 200000


def test_a_beneficiary_without_a_personal_account_has_no_balance(client, sandbox, demo):
    token = sign_in_wechat(client, sandbox)["access_token"]
    assert verify(client, token, "张小明", CHILD).status_code == 200
    assert client.get("/api/v1/me", headers=bearer(token)).get_json()["account"] is None


def test_a_wrong_name_is_identity_mismatch(client, sandbox, demo):
    token = sign_in_wechat(client, sandbox)["access_token"]
    response = verify(client, token, "李四", OWNER)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "IDENTITY_MISMATCH"


def test_an_unknown_valid_id_number_is_the_same_identity_mismatch(client, sandbox, demo):
    from datetime import date

    from app.security.id_number import make_id_number

    token = sign_in_wechat(client, sandbox)["access_token"]
    response = verify(client, token, "张伟", make_id_number("532621", date(1999, 9, 9), 999))
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "IDENTITY_MISMATCH"


def test_r18_a_bad_check_digit_is_id_number_invalid(client, sandbox, demo):
    token = sign_in_wechat(client, sandbox)["access_token"]
    wrong = OWNER[:-1] + ("0" if OWNER[-1] != "0" else "1")
    response = verify(client, token, "张伟", wrong)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "ID_NUMBER_INVALID"


def test_r17_a_raw_id_number_appears_in_no_response_body_and_no_log_line(client, sandbox, demo, caplog):
    caplog.set_level("DEBUG")
    from app.logs import JsonFormatter

    token = sign_in_wechat(client, sandbox)["access_token"]
    bodies = [
        verify(client, token, "李四", OWNER).get_data(as_text=True),
        verify(client, token, "张伟", OWNER[:-1] + "0").get_data(as_text=True),
        verify(client, token, "张伟", OWNER).get_data(as_text=True),
        client.get("/api/v1/me", headers=bearer(token)).get_data(as_text=True),
        client.get(f"/api/v1/no-such-page/{OWNER}").get_data(as_text=True),
    ]
    formatter = JsonFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    assert lines, "the request log wrote nothing"
    for text in bodies + lines:
        assert OWNER not in text
        assert OWNER[:-1] not in text
    assert "张伟" not in "".join(bodies)


def test_identity_verification_is_rate_limited_per_user(make_app, sandbox, demo):
    """R19: per-user limit on the identity group."""
    app = make_app(RATE_LIMIT_PER_USER="2/60")
    client = app.test_client()
    token = sign_in_wechat(client, sandbox)["access_token"]
    assert verify(client, token, "李四", OWNER).status_code == 422
    assert verify(client, token, "李四", OWNER).status_code == 422
    limited = verify(client, token, "张伟", OWNER)
    assert limited.status_code == 429
    assert "Retry-After" in limited.headers
