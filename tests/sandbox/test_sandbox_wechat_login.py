"""WeChat login (code2Session) through WeChatGateway against the emulator."""

from __future__ import annotations

import time

import pytest
import requests

from app.errors import LoginCodeInvalid, UpstreamUnavailable
from app.platforms.wechat import WeChatGateway


def test_a_login_code_gives_the_users_openid_unionid_and_session_key(sandbox, wechat, apps):
    openid = apps.new_openid()
    code = sandbox.issue_wechat_login_code(openid, unionid="uUnion-1")

    session = wechat.code_to_session(code)

    assert session.openid == openid
    assert session.unionid == "uUnion-1"
    assert len(session.session_key) == 24


def test_login_needs_no_access_token(sandbox, wechat, apps):
    # Pitfall 1: wechatpy's code_to_session would fetch a token first; a broken token endpoint
    # must not break login.
    sandbox.inject_fault("wechat.stable_token", errcode=40125, times=5)
    tokens_before = sandbox.call_count("wechat.stable_token") + sandbox.call_count("wechat.token")

    session = wechat.code_to_session(sandbox.issue_wechat_login_code(apps.new_openid()))

    assert session.unionid is None
    assert sandbox.call_count("wechat.stable_token") + sandbox.call_count("wechat.token") == tokens_before


def test_an_unknown_login_code_is_rejected(wechat):
    with pytest.raises(LoginCodeInvalid):
        wechat.code_to_session("not-a-code")


def test_an_empty_login_code_is_rejected_without_calling_wechat(sandbox, wechat):
    calls = sandbox.call_count("wechat.jscode2session")
    with pytest.raises(LoginCodeInvalid):
        wechat.code_to_session("")
    assert sandbox.call_count("wechat.jscode2session") == calls


def test_a_login_code_works_only_once(sandbox, wechat, apps):
    code = sandbox.issue_wechat_login_code(apps.new_openid())
    wechat.code_to_session(code)

    with pytest.raises(LoginCodeInvalid):
        wechat.code_to_session(code)


def test_a_login_code_reused_is_reported_by_wechat_as_40163(sandbox, apps):
    code = sandbox.issue_wechat_login_code(apps.new_openid())
    params = {
        "appid": apps.wechat_appid,
        "secret": apps.wechat_secret,
        "js_code": code,
        "grant_type": "authorization_code",
        "access_token": "ignored",
    }
    first = requests.get(sandbox.url + "/sns/jscode2session", params=params, timeout=5).json()
    second = requests.get(sandbox.url + "/sns/jscode2session", params=params, timeout=5).json()

    assert "errcode" not in first
    assert second["errcode"] == 40163


def test_a_login_code_expires_after_five_minutes(fresh_sandbox, apps):
    gateway = WeChatGateway(
        apps.wechat_appid, apps.wechat_secret, fresh_sandbox.wechat_api_base_url, timeout=1
    )
    fresh = fresh_sandbox.issue_wechat_login_code(apps.new_openid())
    stale = fresh_sandbox.issue_wechat_login_code(apps.new_openid())
    fresh_sandbox.advance_clock(299)
    gateway.code_to_session(fresh)

    fresh_sandbox.advance_clock(2)

    with pytest.raises(LoginCodeInvalid):
        gateway.code_to_session(stale)


def test_a_code_of_another_mini_program_is_invalid(fresh_sandbox, apps):
    fresh_sandbox.register_wechat_app("wxOtherApp", "other-secret")
    code = fresh_sandbox.issue_wechat_login_code(apps.new_openid(), appid="wxOtherApp")
    gateway = WeChatGateway(
        apps.wechat_appid, apps.wechat_secret, fresh_sandbox.wechat_api_base_url, timeout=1
    )

    with pytest.raises(LoginCodeInvalid):
        gateway.code_to_session(code)


def test_a_wrong_app_secret_is_an_upstream_failure_not_a_bad_code(sandbox, apps, caplog):
    gateway = WeChatGateway(apps.wechat_appid, "wrong-secret", sandbox.wechat_api_base_url, timeout=1)

    with pytest.raises(UpstreamUnavailable):
        gateway.code_to_session(sandbox.issue_wechat_login_code(apps.new_openid()))
    assert "40125" in caplog.text


@pytest.mark.parametrize("fault", [{"errcode": -1}, {"http_status": 500}, {"http_status": 502}])
def test_a_busy_or_failing_wechat_makes_login_unavailable(sandbox, wechat, apps, fault):
    sandbox.inject_fault("wechat.jscode2session", **fault)

    with pytest.raises(UpstreamUnavailable):
        wechat.code_to_session(sandbox.issue_wechat_login_code(apps.new_openid()))


def test_login_while_wechat_is_down_is_unavailable(sandbox, wechat, apps):
    code = sandbox.issue_wechat_login_code(apps.new_openid())
    sandbox.set_down("wechat")

    with pytest.raises(UpstreamUnavailable):
        wechat.code_to_session(code)

    sandbox.set_down("wechat", False)
    assert wechat.code_to_session(code).openid


def test_login_when_wechat_refuses_connections_is_unavailable(fresh_sandbox, apps):
    gateway = WeChatGateway(
        apps.wechat_appid, apps.wechat_secret, fresh_sandbox.wechat_api_base_url, timeout=1
    )
    code = fresh_sandbox.issue_wechat_login_code(apps.new_openid())
    fresh_sandbox.stop()

    with pytest.raises(UpstreamUnavailable):
        gateway.code_to_session(code)


def test_a_slow_wechat_times_out_within_the_configured_timeout(sandbox, apps):
    gateway = WeChatGateway(apps.wechat_appid, apps.wechat_secret, sandbox.wechat_api_base_url, timeout=0.3)
    sandbox.inject_fault("wechat.jscode2session", delay=3)
    started = time.monotonic()

    with pytest.raises(UpstreamUnavailable):
        gateway.code_to_session(sandbox.issue_wechat_login_code(apps.new_openid()))
    assert time.monotonic() - started < 2


def test_an_environment_proxy_does_not_intercept_the_local_emulator(sandbox, wechat, apps, monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)

    assert wechat.code_to_session(sandbox.issue_wechat_login_code(apps.new_openid())).openid
