"""The /_sandbox HTTP control API and the standalone entry point."""

from __future__ import annotations

import json

import pytest
import requests

from app.errors import LoginCodeInvalid
from app.platforms import PlatformError
from app.platforms.wechat import WeChatGateway
from sandbox.__main__ import _parser, build_sandbox, load_options
from sandbox.alipay import public_key_pem


def control(sandbox, path: str, body: dict | None = None, method: str = "POST") -> requests.Response:
    # Sent like `curl -d '{...}'`: a JSON body with a form Content-Type.
    return requests.request(
        method,
        f"{sandbox.url}/_sandbox/{path}",
        data=json.dumps(body or {}),
        timeout=5,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def test_a_login_code_from_the_control_api_logs_the_user_in(sandbox, wechat, apps):
    openid = apps.new_openid()

    code = control(sandbox, "wechat/login-code", {"openid": openid}).json()["code"]

    assert wechat.code_to_session(code).openid == openid


def test_consent_messages_and_faults_over_http(sandbox, wechat, apps):
    openid = apps.new_openid()
    control(sandbox, "wechat/login-code", {"openid": openid})
    granted = control(
        sandbox, "wechat/consent", {"openid": openid, "template_id": apps.wechat_template, "count": 2}
    ).json()
    control(sandbox, "faults", {"api": "wechat.subscribe_send", "errcode": -1})

    with pytest.raises(PlatformError, match="-1"):
        wechat.send_subscribe_message(openid, apps.wechat_template, {"thing1": "x"})
    msgid = wechat.send_subscribe_message(openid, apps.wechat_template, {"thing1": "x"})
    listed = requests.get(f"{sandbox.url}/_sandbox/messages", params={"to": openid}, timeout=5).json()

    assert granted == {"one_time_credits": 2, "long_term": False}
    assert listed["count"] == 1 and listed["messages"][0]["msgid"] == msgid


def test_the_platform_can_be_taken_down_and_the_clock_moved_over_http(sandbox, apps):
    assert control(sandbox, "down", {"platform": "alipay"}).json()["down"] == ["alipay"]
    assert requests.get(sandbox.alipay_gateway_url, timeout=5).status_code == 502
    control(sandbox, "down", {"platform": "alipay", "down": False})

    before = sandbox.now()
    assert control(sandbox, "clock/advance", {"seconds": 60}).json()["now"] >= before + 60


def test_alipay_setup_over_http(sandbox, app_private_key_pem, apps):
    public = requests.get(f"{sandbox.url}/_sandbox/alipay/public-key", timeout=5).json()["public_key_pem"]
    code = control(sandbox, "alipay/auth-code", {"user_id": "2088000000000077"}).json()["code"]
    consent = control(
        sandbox,
        "alipay/consent",
        {"user": "2088000000000077", "template_id": apps.alipay_template, "mode": "long_term"},
    ).json()

    assert public == sandbox.alipay_public_key_pem
    assert len(code) == 32
    assert consent["long_term"] is True


def test_bad_control_requests_get_a_400_with_the_reason(sandbox):
    missing = control(sandbox, "wechat/login-code", {})
    bad_fault = control(sandbox, "faults", {"api": "wechat.nope", "errcode": 1})
    not_json = requests.post(f"{sandbox.url}/_sandbox/wechat/login-code", data="openid=x", timeout=5)

    assert (missing.status_code, missing.json()["error"]) == (400, "missing: openid")
    assert bad_fault.status_code == 400 and "unknown api" in bad_fault.json()["error"]
    assert not_json.status_code == 400


def test_the_standalone_runner_reads_a_config_file_and_flags(tmp_path, app_private_key_pem):
    key_file = tmp_path / "app_pub.pem"
    key_file.write_text(public_key_pem(app_private_key_pem))
    config = tmp_path / "sandbox.json"
    config.write_text(
        json.dumps({"port": 0, "wechat": {"appid": "wxFromFile", "secret": "s1", "templates": ["T"]}})
    )
    args = _parser().parse_args(
        [
            "--config",
            str(config),
            "--wechat-appid",
            "wxFromFlag",
            "--wechat-secret",
            "s2",
            "--alipay-appid",
            "2021FromFlag",
            "--alipay-app-public-key-file",
            str(key_file),
            "--alipay-template",
            "AT",
        ]
    )

    with build_sandbox(load_options(args)) as sandbox:
        gateway = WeChatGateway("wxFromFlag", "s2", sandbox.wechat_api_base_url, timeout=1)
        assert (
            gateway.code_to_session(sandbox.issue_wechat_login_code("o1", appid="wxFromFlag")).openid == "o1"
        )
        assert sandbox.summary()["wechat_apps"] == ["wxFromFile", "wxFromFlag"]
        assert sandbox.summary()["alipay_apps"] == ["2021FromFlag"]


def test_a_reset_forgets_users_consent_messages_and_faults_but_keeps_apps(fresh_sandbox, apps):
    openid = apps.new_openid()
    gateway = WeChatGateway(
        apps.wechat_appid, apps.wechat_secret, fresh_sandbox.wechat_api_base_url, timeout=1
    )
    fresh_sandbox.grant_wechat_consent(openid, apps.wechat_template, mode="long_term")
    gateway.send_subscribe_message(openid, apps.wechat_template, {"thing1": "x"})
    fresh_sandbox.inject_fault("wechat.jscode2session", errcode=-1)
    stale_code = fresh_sandbox.issue_wechat_login_code(openid)

    assert control(fresh_sandbox, "reset").status_code == 204

    assert fresh_sandbox.sent_messages() == []
    assert fresh_sandbox.wechat_consent(openid, apps.wechat_template)["long_term"] is False
    with pytest.raises(LoginCodeInvalid):
        gateway.code_to_session(stale_code)
    assert gateway.code_to_session(fresh_sandbox.issue_wechat_login_code(openid)).openid == openid
