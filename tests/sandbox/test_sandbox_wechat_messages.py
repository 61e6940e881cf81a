"""WeChat subscribe messages and access tokens through WeChatGateway against the emulator."""

from __future__ import annotations

import pytest
import requests

from app.platforms import PERMANENT, TOKEN, TRANSIENT, PlatformError
from app.platforms.wechat import TTLMemoryStorage, WeChatGateway

DATA = {
    "thing1": "李*（子女）",
    "amount2": "¥12.30",
    "time3": "2026-11-25 10:30",
    "character_string4": "S202611250001",
}


@pytest.fixture
def user(sandbox, apps) -> str:
    """A user who has logged in to the mini-program (so WeChat knows the openid)."""
    openid = apps.new_openid()
    sandbox.issue_wechat_login_code(openid)
    return openid


def send(gateway: WeChatGateway, openid: str, apps, **overrides) -> str:
    kwargs = {"template_id": apps.wechat_template, "data": DATA, "page": apps.wechat_page} | overrides
    return gateway.send_subscribe_message(openid, **kwargs)


def test_each_one_time_accept_allows_exactly_one_message(sandbox, wechat, user, apps):
    sandbox.grant_wechat_consent(user, apps.wechat_template, count=2)

    msgids = [send(wechat, user, apps), send(wechat, user, apps)]
    with pytest.raises(PlatformError) as excinfo:
        send(wechat, user, apps)

    assert excinfo.value.code == "43101"
    assert excinfo.value.kind == PERMANENT
    assert [m.msgid for m in sandbox.sent_messages(to=user)] == msgids
    assert sandbox.wechat_consent(user, apps.wechat_template)["one_time_credits"] == 0


def test_the_sent_message_carries_the_data_page_and_state(sandbox, wechat, user, apps):
    sandbox.grant_wechat_consent(user, apps.wechat_template)

    msgid = send(wechat, user, apps, miniprogram_state="trial")

    (message,) = sandbox.sent_messages(platform="wechat", to=user)
    assert msgid.isdigit() and message.msgid == msgid
    assert message.data == DATA
    assert message.page == apps.wechat_page
    assert message.extra == {"miniprogram_state": "trial", "lang": "zh_CN"}


def test_a_long_term_consent_allows_many_messages(sandbox, wechat, user, apps):
    sandbox.grant_wechat_consent(user, apps.wechat_template, mode="long_term")

    for _ in range(3):
        send(wechat, user, apps)

    assert len(sandbox.sent_messages(to=user)) == 3


def test_without_consent_the_send_is_refused_and_nothing_arrives(sandbox, wechat, user, apps):
    with pytest.raises(PlatformError) as excinfo:
        send(wechat, user, apps)

    assert excinfo.value.code == "43101"
    assert sandbox.sent_messages(to=user) == []


def test_consent_is_per_template(sandbox, wechat, user, apps):
    sandbox.grant_wechat_consent(user, apps.wechat_other_template)

    with pytest.raises(PlatformError, match="43101"):
        send(wechat, user, apps)


def test_a_revoked_long_term_consent_stops_messages(sandbox, wechat, user, apps):
    sandbox.grant_wechat_consent(user, apps.wechat_template, mode="long_term")
    send(wechat, user, apps)
    sandbox.revoke_wechat_consent(user, apps.wechat_template)

    with pytest.raises(PlatformError, match="43101"):
        send(wechat, user, apps)


def test_an_unknown_openid_is_40003(sandbox, wechat, apps):
    with pytest.raises(PlatformError) as excinfo:
        send(wechat, "oNeverLoggedIn", apps)
    assert (excinfo.value.code, excinfo.value.kind) == ("40003", PERMANENT)


def test_an_unregistered_template_is_40037(sandbox, wechat, user, apps):
    with pytest.raises(PlatformError, match="40037"):
        send(wechat, user, apps, template_id="TPL-unknown")


def test_an_unknown_page_is_41030(sandbox, wechat, user, apps):
    sandbox.grant_wechat_consent(user, apps.wechat_template)
    with pytest.raises(PlatformError, match="41030"):
        send(wechat, user, apps, page="pages/nowhere")


def test_a_thing_value_over_20_characters_is_47003_naming_the_key_and_keeps_the_credit(
    sandbox, wechat, user, apps
):
    sandbox.grant_wechat_consent(user, apps.wechat_template)

    with pytest.raises(PlatformError) as excinfo:
        send(wechat, user, apps, data=DATA | {"thing1": "一" * 21})

    assert excinfo.value.code == "47003"
    assert excinfo.value.kind == PERMANENT
    assert "data.thing1.value" in excinfo.value.message
    assert sandbox.wechat_consent(user, apps.wechat_template)["one_time_credits"] == 1


def test_an_expired_token_is_refreshed_once_and_the_send_succeeds(fresh_sandbox, apps):
    openid = apps.new_openid()
    fresh_sandbox.issue_wechat_login_code(openid)
    fresh_sandbox.grant_wechat_consent(openid, apps.wechat_template, mode="long_term")
    gateway = WeChatGateway(
        apps.wechat_appid, apps.wechat_secret, fresh_sandbox.wechat_api_base_url, timeout=1
    )
    send(gateway, openid, apps)
    old_token = gateway.access_token()

    fresh_sandbox.advance_clock(7200)
    send(gateway, openid, apps)

    assert gateway.access_token() != old_token
    assert fresh_sandbox.call_count("wechat.subscribe_send") == 3
    assert fresh_sandbox.call_count("wechat.stable_token") == 2


def test_a_token_force_refreshed_elsewhere_is_replaced_and_the_send_succeeds(sandbox, wechat, user, apps):
    sandbox.grant_wechat_consent(user, apps.wechat_template, mode="long_term")
    stale = wechat.access_token()
    reply = requests.post(
        sandbox.url + "/cgi-bin/stable_token",
        json={
            "grant_type": "client_credential",
            "appid": apps.wechat_appid,
            "secret": apps.wechat_secret,
            "force_refresh": True,
        },
        timeout=5,
    ).json()

    send(wechat, user, apps)

    assert wechat.access_token() == reply["access_token"] != stale


def test_a_token_error_that_persists_is_raised_after_one_retry_not_looped(sandbox, wechat, user, apps):
    sandbox.grant_wechat_consent(user, apps.wechat_template)
    wechat.access_token()
    sends_before = sandbox.call_count("wechat.subscribe_send")
    sandbox.inject_fault("wechat.subscribe_send", errcode=40001, times=50)

    with pytest.raises(PlatformError) as excinfo:
        send(wechat, user, apps)

    assert (excinfo.value.code, excinfo.value.kind) == ("40001", TOKEN)
    assert sandbox.call_count("wechat.subscribe_send") - sends_before == 2


@pytest.mark.parametrize(
    ("fault", "code"),
    [({"errcode": -1}, "-1"), ({"errcode": 45009}, "45009"), ({"http_status": 500}, "http_5xx")],
)
def test_busy_quota_and_server_errors_are_transient(sandbox, wechat, user, apps, fault, code):
    sandbox.grant_wechat_consent(user, apps.wechat_template)
    sandbox.inject_fault("wechat.subscribe_send", **fault)

    with pytest.raises(PlatformError) as excinfo:
        send(wechat, user, apps)
    assert (excinfo.value.code, excinfo.value.kind) == (code, TRANSIENT)

    send(wechat, user, apps)  # the credit was not used up by the failure


def test_a_send_that_times_out_is_transient(sandbox, user, apps):
    gateway = WeChatGateway(apps.wechat_appid, apps.wechat_secret, sandbox.wechat_api_base_url, timeout=0.3)
    gateway.access_token()
    sandbox.inject_fault("wechat.subscribe_send", delay=2)

    with pytest.raises(PlatformError) as excinfo:
        send(gateway, user, apps)
    assert (excinfo.value.code, excinfo.value.kind) == ("timeout", TRANSIENT)


def test_a_token_fetch_with_a_wrong_secret_is_permanent(sandbox, user, apps):
    gateway = WeChatGateway(apps.wechat_appid, "wrong", sandbox.wechat_api_base_url, timeout=1)

    with pytest.raises(PlatformError) as excinfo:
        send(gateway, user, apps)
    assert (excinfo.value.code, excinfo.value.kind) == ("40125", PERMANENT)


def test_wechat_down_makes_sends_transient(sandbox, wechat, user, apps):
    sandbox.set_down("wechat")
    with pytest.raises(PlatformError) as excinfo:
        send(wechat, user, apps)
    assert excinfo.value.kind == TRANSIENT


def test_the_token_is_shared_through_the_storage_and_not_refetched(sandbox, user, apps):
    storage = TTLMemoryStorage()
    first = WeChatGateway(apps.wechat_appid, apps.wechat_secret, sandbox.wechat_api_base_url, storage)
    second = WeChatGateway(apps.wechat_appid, apps.wechat_secret, sandbox.wechat_api_base_url, storage)
    fetches = sandbox.call_count("wechat.stable_token")

    assert first.access_token() == second.access_token()
    assert sandbox.call_count("wechat.stable_token") == fetches + 1


def test_the_in_memory_token_storage_forgets_values_after_their_ttl():
    now = [1000.0]
    storage = TTLMemoryStorage(clock=lambda: now[0])
    storage.set("k", "v", ttl=10)
    storage.set("forever", "v")

    now[0] += 9.9
    assert storage.get("k") == "v"
    now[0] += 0.1
    assert storage.get("k") is None
    assert storage.get("forever") == "v"
