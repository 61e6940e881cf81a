"""Alipay login and template messages through AlipayGateway against the emulator."""

from __future__ import annotations

import base64
import json
import logging
from urllib.parse import parse_qsl

import pytest
import requests
from alipay import AliPay
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from app.errors import LoginCodeInvalid, UpstreamUnavailable
from app.platforms import PERMANENT, TRANSIENT, PlatformError
from app.platforms.alipay import AlipayGateway
from sandbox.alipay import NO_CONSENT_SUB_CODE, public_key_pem

DATA = {"keyword1": "李*（子女）", "keyword2": "12.30元", "keyword3": "S202611250001"}


def test_an_auth_code_gives_the_alipay_user_id(sandbox, alipay, apps):
    user_id = apps.new_alipay_user_id()

    identity = alipay.exchange_auth_code(sandbox.issue_alipay_auth_code(user_id=user_id))

    assert (identity.user_id, identity.open_id, identity.union_id) == (user_id, None, None)


def test_an_openid_app_gets_the_open_id_and_no_user_id(sandbox, alipay, apps):
    open_id = apps.new_alipay_open_id()

    identity = alipay.exchange_auth_code(sandbox.issue_alipay_auth_code(open_id=open_id, union_id="U1"))

    assert (identity.user_id, identity.open_id, identity.union_id) == (None, open_id, "U1")


def test_an_unknown_auth_code_is_rejected(alipay):
    with pytest.raises(LoginCodeInvalid):
        alipay.exchange_auth_code("not-a-code")


def test_an_auth_code_works_only_once(sandbox, alipay):
    code = sandbox.issue_alipay_auth_code()
    alipay.exchange_auth_code(code)

    with pytest.raises(LoginCodeInvalid):
        alipay.exchange_auth_code(code)


def test_an_auth_code_expires_after_a_day(fresh_sandbox, app_private_key_pem, apps):
    gateway = AlipayGateway(
        apps.alipay_appid,
        app_private_key_pem,
        fresh_sandbox.alipay_public_key_pem,
        fresh_sandbox.alipay_gateway_url,
        timeout=1,
    )
    code = fresh_sandbox.issue_alipay_auth_code()
    fresh_sandbox.advance_clock(24 * 3600)

    with pytest.raises(LoginCodeInvalid):
        gateway.exchange_auth_code(code)


def test_a_request_signed_with_the_wrong_key_is_rejected_by_the_gateway(
    sandbox, wrong_private_key_pem, apps, caplog
):
    gateway = AlipayGateway(
        apps.alipay_appid,
        wrong_private_key_pem,
        sandbox.alipay_public_key_pem,
        sandbox.alipay_gateway_url,
        timeout=1,
    )

    with pytest.raises(UpstreamUnavailable):
        gateway.exchange_auth_code(sandbox.issue_alipay_auth_code())
    with pytest.raises(PlatformError) as excinfo:
        gateway.send_template_message(apps.new_alipay_user_id(), template_id=apps.alipay_template, data=DATA)

    assert "isv.invalid-signature" in caplog.text
    assert (excinfo.value.code, excinfo.value.kind) == ("isv.invalid-signature", PERMANENT)


def test_a_reply_with_a_bad_signature_is_unavailable_and_logged_not_a_crash(
    sandbox, app_private_key_pem, wrong_private_key_pem, apps, caplog
):
    gateway = AlipayGateway(
        apps.alipay_appid,
        app_private_key_pem,
        public_key_pem(wrong_private_key_pem),
        sandbox.alipay_gateway_url,
        timeout=1,
    )

    with caplog.at_level(logging.ERROR, logger="app.platforms.alipay"):
        with pytest.raises(UpstreamUnavailable):
            gateway.exchange_auth_code(sandbox.issue_alipay_auth_code())

    assert "signature" in caplog.text and "ALIPAY_PUBLIC_KEY" in caplog.text


@pytest.mark.parametrize("fault", [{"http_status": 500}, {"errcode": "20000"}])
def test_a_failing_alipay_makes_login_unavailable(sandbox, alipay, fault):
    sandbox.inject_fault("alipay.system.oauth.token", **fault)
    with pytest.raises(UpstreamUnavailable):
        alipay.exchange_auth_code(sandbox.issue_alipay_auth_code())


def test_login_while_alipay_is_down_is_unavailable(sandbox, alipay):
    sandbox.set_down("alipay")
    with pytest.raises(UpstreamUnavailable):
        alipay.exchange_auth_code(sandbox.issue_alipay_auth_code())


def test_a_slow_alipay_times_out_as_a_transient_error(sandbox, app_private_key_pem, apps):
    gateway = AlipayGateway(
        apps.alipay_appid,
        app_private_key_pem,
        sandbox.alipay_public_key_pem,
        sandbox.alipay_gateway_url,
        timeout=0.3,
    )
    user_id = apps.new_alipay_user_id()
    sandbox.grant_alipay_consent(user_id, apps.alipay_template)
    sandbox.inject_fault("alipay.open.app.mini.templatemessage.send", delay=2)

    with pytest.raises(PlatformError) as excinfo:
        gateway.send_template_message(user_id, template_id=apps.alipay_template, data=DATA)
    assert (excinfo.value.code, excinfo.value.kind) == ("timeout", TRANSIENT)


def test_a_consented_user_gets_exactly_one_message_per_credit(sandbox, alipay, apps):
    user_id = apps.new_alipay_user_id()
    sandbox.grant_alipay_consent(user_id, apps.alipay_template)

    alipay.send_template_message(
        user_id, template_id=apps.alipay_template, data=DATA, page="pages/notice/index"
    )
    with pytest.raises(PlatformError) as excinfo:
        alipay.send_template_message(user_id, template_id=apps.alipay_template, data=DATA)

    (message,) = sandbox.sent_messages(platform="alipay", to=user_id)
    assert message.data == DATA
    assert message.page == "pages/notice/index"
    assert (excinfo.value.code, excinfo.value.kind) == (NO_CONSENT_SUB_CODE, PERMANENT)


def test_an_open_id_user_with_long_term_consent_gets_every_message(sandbox, alipay, apps):
    open_id = apps.new_alipay_open_id()
    sandbox.grant_alipay_consent(open_id, apps.alipay_template, mode="long_term")

    for _ in range(2):
        alipay.send_template_message(to_open_id=open_id, template_id=apps.alipay_template, data=DATA)

    messages = sandbox.sent_messages(platform="alipay", to=open_id)
    assert [m.extra["to_field"] for m in messages] == ["to_open_id", "to_open_id"]


def test_a_keyword_over_50_characters_is_refused(sandbox, alipay, apps):
    user_id = apps.new_alipay_user_id()
    sandbox.grant_alipay_consent(user_id, apps.alipay_template)

    with pytest.raises(PlatformError) as excinfo:
        alipay.send_template_message(user_id, template_id=apps.alipay_template, data={"keyword1": "字" * 51})

    assert (excinfo.value.code, excinfo.value.kind) == ("USER_KEYWORD_LENGTH_ERROR", PERMANENT)
    assert sandbox.alipay_consent(user_id, apps.alipay_template)["one_time_credits"] == 1


def test_an_unknown_template_is_refused(sandbox, alipay, apps):
    with pytest.raises(PlatformError) as excinfo:
        alipay.send_template_message(apps.new_alipay_user_id(), template_id="ATPL-unknown", data=DATA)
    assert excinfo.value.code == "USER_TEMPLATE_ILLEGAL"


@pytest.mark.parametrize(
    ("fault", "code"),
    [({"errcode": "20000"}, "isp.unknow-error"), ({"http_status": 502}, "http_5xx")],
)
def test_alipay_service_errors_are_transient(sandbox, alipay, apps, fault, code):
    sandbox.inject_fault("alipay.open.app.mini.templatemessage.send", **fault)
    with pytest.raises(PlatformError) as excinfo:
        alipay.send_template_message(apps.new_alipay_user_id(), template_id=apps.alipay_template, data=DATA)
    assert (excinfo.value.code, excinfo.value.kind) == (code, TRANSIENT)


def test_a_send_names_exactly_one_recipient(alipay, apps):
    with pytest.raises(ValueError):
        alipay.send_template_message(template_id=apps.alipay_template, data=DATA)
    with pytest.raises(ValueError):
        alipay.send_template_message("2088", "open", template_id=apps.alipay_template, data=DATA)


def test_braces_in_values_do_not_break_the_reply_signature(sandbox, alipay, apps):
    user_id = apps.new_alipay_user_id()
    sandbox.grant_alipay_consent(user_id, apps.alipay_template)

    alipay.send_template_message(user_id, template_id=apps.alipay_template, data={"keyword1": "a}b{{c"})

    assert sandbox.sent_messages(to=user_id)[0].data == {"keyword1": "a}b{{c"}


def test_the_gateway_also_accepts_a_signed_post_form(sandbox, app_private_key_pem, apps):
    # Other SDKs POST the parameters as a form instead of a query string.
    client = AliPay(
        apps.alipay_appid,
        app_private_key_string=app_private_key_pem,
        alipay_public_key_string=sandbox.alipay_public_key_pem,
    )
    signed = client.sign_data(
        client.build_body(
            "alipay.system.oauth.token",
            grant_type="authorization_code",
            code=sandbox.issue_alipay_auth_code(user_id="2088000000000042"),
        )
    )
    form = dict(parse_qsl(signed))

    raw = requests.post(sandbox.alipay_gateway_url, data=form, timeout=5).text

    assert client._verify_and_return_sync_response(raw, "alipay_system_oauth_token_response")["user_id"] == (
        "2088000000000042"
    )


def test_a_tampered_request_fails_the_signature_check(sandbox, app_private_key_pem, apps):
    client = AliPay(
        apps.alipay_appid,
        app_private_key_string=app_private_key_pem,
        alipay_public_key_string=sandbox.alipay_public_key_pem,
    )
    query = dict(
        parse_qsl(
            client.sign_data(
                client.build_body("alipay.system.oauth.token", grant_type="authorization_code", code="c1")
            )
        )
    )
    query["code"] = "c2"

    reply = requests.get(sandbox.alipay_gateway_url, params=query, timeout=5).json()

    assert reply["error_response"]["sub_code"] == "isv.invalid-signature"
    assert "sign" not in reply


def test_replies_are_signed_over_the_exact_payload_with_the_emulator_key(sandbox, app_private_key_pem, apps):
    client = AliPay(
        apps.alipay_appid,
        app_private_key_string=app_private_key_pem,
        alipay_public_key_string=sandbox.alipay_public_key_pem,
    )
    query = client.sign_data(
        client.build_body(
            "alipay.system.oauth.token",
            grant_type="authorization_code",
            code=sandbox.issue_alipay_auth_code(),
        )
    )
    raw = requests.get(f"{sandbox.alipay_gateway_url}?{query}", timeout=5).text
    payload = raw[raw.index(":") + 1 : raw.rindex(',"sign"')]

    key = serialization.load_pem_public_key(sandbox.alipay_public_key_pem.encode())
    key.verify(
        base64.b64decode(json.loads(raw)["sign"]), payload.encode(), padding.PKCS1v15(), hashes.SHA256()
    )
    assert json.loads(payload)["user_id"].startswith("2088")
