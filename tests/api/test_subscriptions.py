"""``/api/v1/subscriptions``: the consent the mini-program got from the subscription popup (R15)."""

from __future__ import annotations

import pytest

from sandbox.push import build_event_push, popup_event
from tests.conftest import ALIPAY_TEMPLATE_DEDUCTION, TEMPLATE_DEDUCTION
from tests.helpers import bearer, random_openid, sign_in_alipay, sign_in_wechat

URL = "/api/v1/subscriptions"
CALLBACK = "/api/v1/callbacks/wechat"


@pytest.fixture
def wechat_user(client, sandbox):
    openid = random_openid()
    signed_in = sign_in_wechat(client, sandbox, openid)
    return openid, bearer(signed_in["access_token"])


def subscribe(client, headers, results, mode="one_time", channel="wechat"):
    return client.post(URL, json={"channel": channel, "mode": mode, "results": results}, headers=headers)


def consent_of(response, template_id=TEMPLATE_DEDUCTION):
    return next(i for i in response.get_json()["items"] if i["template_id"] == template_id)


def push_popup(client, openid, result="accept", create_time=None):
    push = build_event_push(popup_event(openid, {TEMPLATE_DEDUCTION: result}, create_time=create_time),
                            token="test-msg-token")
    assert client.post(push.url(CALLBACK), data=push.body.encode(), headers=push.headers).status_code == 200


def test_each_one_time_accept_is_one_credit_and_credits_add_up_R15(client, wechat_user):
    _, headers = wechat_user

    subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"})
    response = subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"})

    assert response.status_code == 200
    assert response.get_json()["channel"] == "wechat"
    assert consent_of(response) == {"template_id": TEMPLATE_DEDUCTION, "one_time_credits": 2, "long_term": None}


def test_a_one_time_reject_declines_only_this_request(client, wechat_user):
    _, headers = wechat_user
    subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"})

    response = subscribe(client, headers, {TEMPLATE_DEDUCTION: "reject"})

    assert consent_of(response)["one_time_credits"] == 1


def test_a_long_term_accept_lasts_until_it_is_changed_R15(client, wechat_user):
    _, headers = wechat_user

    accepted = subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"}, mode="long_term")
    rejected = subscribe(client, headers, {TEMPLATE_DEDUCTION: "reject"}, mode="long_term")

    assert consent_of(accepted)["long_term"] == "accept"
    assert consent_of(rejected)["long_term"] == "reject"


def test_a_banned_template_loses_its_credits(client, wechat_user):
    _, headers = wechat_user
    subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"})

    response = subscribe(client, headers, {TEMPLATE_DEDUCTION: "ban"})

    assert consent_of(response) == {"template_id": TEMPLATE_DEDUCTION, "one_time_credits": 0, "long_term": "ban"}


@pytest.mark.parametrize("client_first", [True, False])
def test_an_accept_reported_by_both_the_client_and_wechat_counts_once_R15(client, wechat_user, client_first):
    openid, headers = wechat_user

    if client_first:
        subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"})
        push_popup(client, openid)
    else:
        push_popup(client, openid)
        subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"})

    assert consent_of(client.get(URL, headers=headers))["one_time_credits"] == 1


def test_two_accepts_each_reported_twice_are_two_credits(client, wechat_user):
    openid, headers = wechat_user

    subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"})
    push_popup(client, openid, create_time=1700000001)
    push_popup(client, openid, create_time=1700000002)
    subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"})

    assert consent_of(client.get(URL, headers=headers))["one_time_credits"] == 2


def test_a_pushed_accept_of_a_long_term_template_is_not_also_a_credit(client, wechat_user):
    openid, headers = wechat_user

    push_popup(client, openid)  # WeChat's push does not say which kind of template it was
    response = subscribe(client, headers, {TEMPLATE_DEDUCTION: "accept"}, mode="long_term")

    assert consent_of(response) == {"template_id": TEMPLATE_DEDUCTION, "one_time_credits": 0, "long_term": "accept"}


def test_an_alipay_user_records_alipay_consent(client, sandbox):
    headers = bearer(sign_in_alipay(client, sandbox)["access_token"])

    response = subscribe(client, headers, {ALIPAY_TEMPLATE_DEDUCTION: "accept"}, channel="alipay")

    assert response.status_code == 200
    assert consent_of(response, ALIPAY_TEMPLATE_DEDUCTION)["one_time_credits"] == 1


def test_get_lists_the_consent_for_every_template_of_the_users_platform(client, wechat_user):
    _, headers = wechat_user

    response = client.get(URL, headers=headers)

    assert response.status_code == 200
    assert response.get_json() == {"channel": "wechat", "items": [
        {"template_id": TEMPLATE_DEDUCTION, "one_time_credits": 0, "long_term": None}]}


def test_a_wechat_user_cannot_record_alipay_consent(client, wechat_user):
    _, headers = wechat_user

    response = subscribe(client, headers, {ALIPAY_TEMPLATE_DEDUCTION: "accept"}, channel="alipay")

    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize("body", [
    {"channel": "wechat", "mode": "one_time", "results": {"tmpl-someone-else": "accept"}},
    {"channel": "wechat", "mode": "one_time", "results": {TEMPLATE_DEDUCTION: "maybe"}},
    {"channel": "wechat", "mode": "sometimes", "results": {TEMPLATE_DEDUCTION: "accept"}},
    {"channel": "wechat", "mode": "one_time", "results": {}},
    {"channel": "wechat", "mode": "one_time", "results": {f"t{i}": "accept" for i in range(4)}},
    {"channel": "sms", "mode": "one_time", "results": {TEMPLATE_DEDUCTION: "accept"}},
])
def test_malformed_or_unknown_choices_are_400_and_change_nothing(client, wechat_user, body):
    _, headers = wechat_user

    response = client.post(URL, json=body, headers=headers)

    assert response.status_code == 400
    assert consent_of(client.get(URL, headers=headers))["one_time_credits"] == 0


def test_subscribing_needs_a_signed_in_user(client, demo):
    assert client.post(URL, json={}).status_code == 401
    response = client.post(URL, json={"channel": "wechat", "mode": "one_time",
                                      "results": {TEMPLATE_DEDUCTION: "accept"}},
                           headers=bearer(demo.tokens["window1"]))
    assert response.status_code == 403
