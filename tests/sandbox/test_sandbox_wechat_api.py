"""The emulated WeChat endpoints answer like the real ones (checked over plain HTTP)."""

from __future__ import annotations

import json

import pytest
import requests

from sandbox.wechat import data_value_valid


def get(sandbox, path: str, **params) -> dict:
    return requests.get(sandbox.url + path, params=params, timeout=5).json()


def post(sandbox, path: str, body: dict, **params) -> dict:
    # Like wechatpy: JSON bytes without a Content-Type header.
    return requests.post(sandbox.url + path, params=params, data=json.dumps(body), timeout=5).json()


def stable(sandbox, apps, force: bool = False) -> dict:
    body = {
        "grant_type": "client_credential",
        "appid": apps.wechat_appid,
        "secret": apps.wechat_secret,
        "force_refresh": force,
    }
    return post(sandbox, "/cgi-bin/stable_token", body)


def plain_token(sandbox, apps) -> str:
    reply = get(
        sandbox,
        "/cgi-bin/token",
        grant_type="client_credential",
        appid=apps.wechat_appid,
        secret=apps.wechat_secret,
    )
    assert reply["expires_in"] == 7200
    return reply["access_token"]


def send_status(sandbox, token: str) -> int:
    """The errcode of a send to an unknown user: 40003 when ``token`` is accepted, else the token error."""
    reply = post(sandbox, "/cgi-bin/message/subscribe/send", {"touser": "nobody"}, access_token=token)
    return reply["errcode"]


@pytest.mark.parametrize(
    ("params", "errcode"),
    [
        ({"grant_type": "client_credential", "appid": "wxUnknown", "secret": "x"}, 40013),
        ({"grant_type": "client_credential", "appid": "APPID", "secret": "wrong"}, 40125),
        ({"grant_type": "password", "appid": "APPID", "secret": "SECRET"}, 40002),
        ({"grant_type": "client_credential", "secret": "SECRET"}, 41002),
    ],
)
def test_token_requests_with_bad_credentials_are_refused(sandbox, apps, params, errcode):
    params = {
        k: {"APPID": apps.wechat_appid, "SECRET": apps.wechat_secret}.get(v, v) for k, v in params.items()
    }
    reply = get(sandbox, "/cgi-bin/token", **params)
    assert reply["errcode"] == errcode
    assert " rid: " in reply["errmsg"]


def test_a_new_plain_token_makes_the_previous_one_stale_after_five_minutes(fresh_sandbox, apps):
    first = plain_token(fresh_sandbox, apps)
    second = plain_token(fresh_sandbox, apps)
    assert send_status(fresh_sandbox, first) == 40003  # still valid during the overlap

    fresh_sandbox.advance_clock(300)

    assert send_status(fresh_sandbox, first) == 40001
    assert send_status(fresh_sandbox, second) == 40003


def test_a_token_expires_after_two_hours(fresh_sandbox, apps):
    token = plain_token(fresh_sandbox, apps)
    fresh_sandbox.advance_clock(7200)
    assert send_status(fresh_sandbox, token) == 42001


def test_unknown_and_missing_tokens_are_refused(sandbox):
    assert send_status(sandbox, "made-up") == 40001
    assert post(sandbox, "/cgi-bin/message/subscribe/send", {})["errcode"] == 41001


def test_the_stable_token_stays_the_same_until_forced(fresh_sandbox, apps):
    first = stable(fresh_sandbox, apps)
    again = stable(fresh_sandbox, apps)
    forced = stable(fresh_sandbox, apps, force=True)

    assert first["access_token"] == again["access_token"] != forced["access_token"]
    assert send_status(fresh_sandbox, first["access_token"]) == 40001
    assert send_status(fresh_sandbox, forced["access_token"]) == 40003


def test_the_stable_token_is_renewed_in_its_last_five_minutes(fresh_sandbox, apps):
    first = stable(fresh_sandbox, apps)
    fresh_sandbox.advance_clock(6901)

    renewed = stable(fresh_sandbox, apps)

    assert renewed["access_token"] != first["access_token"]
    assert send_status(fresh_sandbox, first["access_token"]) == 40003  # the old one lives out its time


def test_jscode2session_ignores_an_access_token_and_omits_errcode_on_success(sandbox, apps):
    code = sandbox.issue_wechat_login_code(apps.new_openid())
    reply = get(
        sandbox,
        "/sns/jscode2session",
        appid=apps.wechat_appid,
        secret=apps.wechat_secret,
        js_code=code,
        grant_type="authorization_code",
        access_token="whatever",
    )
    assert set(reply) == {"openid", "session_key"}


def test_a_send_with_an_invalid_miniprogram_state_is_47003(sandbox, apps):
    openid = apps.new_openid()
    sandbox.issue_wechat_login_code(openid)
    body = {
        "touser": openid,
        "template_id": apps.wechat_template,
        "data": {"thing1": {"value": "x"}},
        "miniprogram_state": "production",
    }
    token = stable(sandbox, apps)["access_token"]
    assert post(sandbox, "/cgi-bin/message/subscribe/send", body, access_token=token)["errcode"] == 47003


def test_a_delay_fault_still_answers_normally(sandbox, apps):
    sandbox.inject_fault("wechat.stable_token", delay=0.2)
    assert "access_token" in stable(sandbox, apps)


def test_faults_apply_to_the_next_calls_only(sandbox, apps):
    sandbox.inject_fault("wechat.stable_token", errcode=45009, times=2)
    assert [stable(sandbox, apps).get("errcode") for _ in range(3)] == [45009, 45009, None]


def test_an_unknown_fault_target_is_refused(sandbox):
    with pytest.raises(ValueError):
        sandbox.inject_fault("wechat.nope", errcode=-1)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("thing1", "二十个字以内的事物描述二十个字以内的事物"),
        ("number2", "12.5"),
        ("letter3", "abcXYZ"),
        ("symbol4", "%$#"),
        ("character_string5", "S2026-11-25_0001"),
        ("time6", "15:01"),
        ("time6", "2019年10月1日 15:01"),
        ("time6", "2026-11-25 10:30 ~ 2026-11-25 11:00"),
        ("date7", "2019年10月1日"),
        ("date7", "2026-11-25"),
        ("amount8", "¥12.30"),
        ("amount8", "12.30元"),
        ("phone_number9", "+86-0871-1234567"),
        ("car_number10", "粤A8Z8A8"),
        ("name11", "李*"),
        ("name11", "Li Lei"),
        ("phrase12", "扣费成功"),
    ],
)
def test_values_within_the_documented_limits_are_accepted(key, value):
    assert data_value_valid(key, value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("thing1", "二十一个字的事物描述二十一个字的事物描述啊"),
        ("thing1", ""),
        ("number2", "12a"),
        ("number2", "1" * 33),
        ("letter3", "abc1"),
        ("symbol4", "%%%%%%"),
        ("character_string5", "中文"),
        ("character_string5", "x" * 33),
        ("time6", "明天"),
        ("date7", "15:01"),
        ("amount8", "¥12345678901"),
        ("amount8", "十二元"),
        ("phone_number9", "1" * 18),
        ("car_number10", "粤A8Z8A8888"),
        ("name11", "这是一个超过十个字的名字啊"),
        ("phrase12", "扣费成功了吗啊"),
        ("phrase12", "ok"),
        ("unknown1", "x"),
        ("thing", "no digits"),
    ],
)
def test_values_outside_the_documented_limits_are_refused(key, value):
    assert not data_value_valid(key, value)
