"""R21 platform proofs through the adapters against the emulator: WeChat's phone button and
real-name check, Alipay's certified identity and my.getPhoneNumber's encrypted, signed response."""

from __future__ import annotations

import base64
import json

import pytest

from app.errors import LoginCodeInvalid, UpstreamUnavailable
from app.platforms import PlatformError
from app.platforms.alipay import PhoneResponseInvalid, decode_aes_key, open_phone_response

NAME, ID_NUMBER = "张伟", "53262119800101123X"


# --- WeChat: getuserphonenumber ---------------------------------------------------------------


def test_a_phone_code_gives_the_accounts_number_once(sandbox, wechat, apps):
    openid = apps.new_openid()
    sandbox.set_wechat_phone(openid, "13800001234")
    code = sandbox.issue_wechat_phone_code(openid)

    assert wechat.get_phone_number(code) == "13800001234"
    with pytest.raises(PlatformError) as used:
        wechat.get_phone_number(code)
    assert used.value.code == "40163"


def test_an_unknown_phone_code_is_40029(wechat):
    with pytest.raises(PlatformError) as err:
        wechat.get_phone_number("forged")
    assert err.value.code == "40029"


def test_a_phone_code_expires_after_five_minutes(fresh_sandbox, apps):
    from app.platforms.wechat import WeChatGateway

    gateway = WeChatGateway(apps.wechat_appid, apps.wechat_secret, fresh_sandbox.wechat_api_base_url, timeout=1.0)
    openid = apps.new_openid()
    fresh_sandbox.set_wechat_phone(openid, "13800001234")
    gateway.access_token()
    code = fresh_sandbox.issue_wechat_phone_code(openid)
    fresh_sandbox.advance_clock(301)
    with pytest.raises(PlatformError) as err:
        gateway.get_phone_number(code)
    assert err.value.code in ("40029", "42001")  # the token may have aged out too


def test_a_rejected_token_is_refreshed_once_for_the_phone_call(sandbox, wechat, apps):
    openid = apps.new_openid()
    sandbox.set_wechat_phone(openid, "13900005678")
    wechat.access_token()
    sandbox.inject_fault("wechat.getuserphonenumber", errcode=40001)
    assert wechat.get_phone_number(sandbox.issue_wechat_phone_code(openid)) == "13900005678"


def test_the_emulator_refuses_a_phone_call_without_a_valid_token(sandbox, apps):
    import requests

    openid = apps.new_openid()
    sandbox.set_wechat_phone(openid, "13800001234")
    reply = requests.post(sandbox.wechat_api_base_url + "wxa/business/getuserphonenumber?access_token=bad",
                          json={"code": sandbox.issue_wechat_phone_code(openid)}, timeout=2).json()
    assert reply["errcode"] == 40001


# --- WeChat: checkrealnameinfo ----------------------------------------------------------------


def test_the_real_name_check_matches_only_the_users_own_identity(sandbox, wechat, apps):
    openid = apps.new_openid()
    sandbox.set_wechat_identity(openid, NAME, ID_NUMBER)

    assert wechat.check_real_name(openid, NAME, ID_NUMBER, sandbox.issue_wechat_realname_code(openid)) == (
        "V_OP_NM_MA", "V_NM_ID_MA")
    other = apps.new_openid()
    sandbox.set_wechat_identity(other, "李四", "532621198205202246")
    verdict = wechat.check_real_name(other, NAME, ID_NUMBER, sandbox.issue_wechat_realname_code(other))
    assert verdict == ("V_OP_NM_UM", "V_NM_ID_MA")  # a real pair, but not this user's


def test_an_uncertified_user_gets_v_op_na(sandbox, wechat, apps):
    openid = apps.new_openid()
    sandbox.set_wechat_identity(openid, NAME, ID_NUMBER)
    sandbox.set_wechat_identity(openid, None)
    verdict = wechat.check_real_name(openid, NAME, ID_NUMBER, sandbox.issue_wechat_realname_code(openid))
    assert verdict[0] == "V_OP_NA"


def test_a_real_name_code_is_single_use_and_bound_to_its_user(sandbox, wechat, apps):
    openid, thief = apps.new_openid(), apps.new_openid()
    sandbox.set_wechat_identity(openid, NAME, ID_NUMBER)
    code = sandbox.issue_wechat_realname_code(openid)
    with pytest.raises(PlatformError) as stolen:
        wechat.check_real_name(thief, NAME, ID_NUMBER, code)
    assert stolen.value.code == "40003"
    with pytest.raises(PlatformError) as used:
        wechat.check_real_name(openid, NAME, ID_NUMBER, code)
    assert used.value.code == "40163"


# --- Alipay: certified identity ---------------------------------------------------------------


def test_a_certified_alipay_user_shows_name_and_cert_no(sandbox, alipay, apps):
    user_id = apps.new_alipay_user_id()
    sandbox.set_alipay_identity(user_id, NAME, ID_NUMBER)
    found = alipay.certification(sandbox.issue_alipay_auth_code(user_id=user_id))
    assert (found.user_id, found.certified, found.name, found.cert_no, found.cert_type) == (
        user_id, True, NAME, ID_NUMBER, "0")


def test_an_uncertified_alipay_user_is_not_certified(sandbox, alipay, apps):
    user_id = apps.new_alipay_user_id()
    sandbox.set_alipay_identity(user_id, NAME, ID_NUMBER, certified=False)
    assert alipay.certification(sandbox.issue_alipay_auth_code(user_id=user_id)).certified is False
    nobody = apps.new_alipay_user_id()
    found = alipay.certification(sandbox.issue_alipay_auth_code(user_id=nobody))
    assert (found.certified, found.cert_no) == (False, None)


def test_a_bad_alipay_auth_code_is_login_code_invalid_and_an_outage_is_upstream(sandbox, alipay):
    with pytest.raises(LoginCodeInvalid):
        alipay.certification("not-a-code")
    sandbox.set_down("alipay")
    with pytest.raises(UpstreamUnavailable):
        alipay.certification(sandbox.issue_alipay_auth_code())


def test_user_info_share_refuses_an_unknown_token(sandbox, alipay):
    with pytest.raises(PlatformError) as err:
        alipay._call("alipay.user.info.share", auth_token="authusrBforged")
    assert err.value.code == "aop.invalid-auth-token"


# --- Alipay: my.getPhoneNumber ----------------------------------------------------------------


def test_the_phone_response_verifies_and_decrypts_to_the_number(sandbox, apps):
    user_id = apps.new_alipay_user_id()
    sandbox.set_alipay_phone(user_id, "13700007777")
    text = sandbox.alipay_phone_response(user_id)
    outer = json.loads(text)
    assert "13700007777" not in text and outer["encrypt_type"] == "AES" and outer["sign_type"] == "RSA2"
    key = decode_aes_key(apps.alipay_aes_key)
    assert open_phone_response(text, sandbox.alipay_public_key_pem, key) == "13700007777"


@pytest.mark.parametrize("tamper", ["sign", "response", "key", "aes", "refused", "plain"])
def test_a_phone_response_that_is_tampered_with_or_refused_is_rejected(sandbox, apps, tamper,
                                                                       wrong_private_key_pem):
    from sandbox.alipay import aes_encrypt, public_key_pem

    user_id = apps.new_alipay_user_id()
    sandbox.set_alipay_phone(user_id, "13700007777")
    outer = json.loads(sandbox.alipay_phone_response(user_id, refused=tamper == "refused"))
    public, key = sandbox.alipay_public_key_pem, decode_aes_key(apps.alipay_aes_key)
    if tamper == "sign":
        outer["sign"] = base64.b64encode(b"\x00" * 256).decode()
    elif tamper == "response":  # another number, encrypted with the right key, but not signed by Alipay
        outer["response"] = aes_encrypt(key, json.dumps({"code": "10000", "msg": "Success", "mobile": "13600000000"}))
    elif tamper == "key":
        public = public_key_pem(wrong_private_key_pem)
    elif tamper == "aes":
        key = bytes(16)
    elif tamper == "plain":
        outer["response"] = json.dumps({"code": "10000", "mobile": "13600000000"})
    with pytest.raises(PhoneResponseInvalid):
        open_phone_response(json.dumps(outer), public, key)


def test_the_emulator_control_api_sets_identities_and_phones(sandbox, apps):
    import requests

    openid = apps.new_openid()
    base = sandbox.url + "/_sandbox"
    assert requests.post(base + "/wechat/identity", json={"openid": openid, "name": NAME, "id_number": ID_NUMBER},
                         timeout=2).status_code == 200
    assert requests.post(base + "/wechat/phone", json={"openid": openid, "phone": "13800001234"},
                         timeout=2).status_code == 200
    assert requests.post(base + "/wechat/realname-code", json={"openid": openid}, timeout=2).json()["code"]
    assert requests.post(base + "/wechat/phone-code", json={"openid": openid}, timeout=2).json()["code"]
    user = apps.new_alipay_user_id()
    assert requests.post(base + "/alipay/identity", json={"user": user, "name": NAME, "cert_no": ID_NUMBER,
                                                          "certified": False}, timeout=2).status_code == 200
    assert requests.post(base + "/alipay/phone", json={"user": user, "phone": "13800001234"},
                         timeout=2).status_code == 200
    text = requests.post(base + "/alipay/phone-response", json={"user": user}, timeout=2).json()["response"]
    assert json.loads(text)["sign"]


@pytest.mark.parametrize("phone_info", [
    {"purePhoneNumber": "13800001234", "countryCode": "86"},  # no watermark: not known to be ours
    {"purePhoneNumber": "13800001234", "countryCode": "86", "watermark": "wx-sandbox"},
    {"purePhoneNumber": "13800001234", "countryCode": "86", "watermark": {"timestamp": 1}},
    {"purePhoneNumber": "13800001234", "countryCode": "86", "watermark": {"appid": "wx-another-app"}},
    {"purePhoneNumber": ["13800001234"], "countryCode": "86", "watermark": {"appid": "APP"}},
])
def test_a_phone_answer_without_this_apps_watermark_or_a_number_is_refused(wechat, monkeypatch, phone_info):
    """A number is taken only from a reply watermarked with this app's appid (WeChat always sends
    one): a reply without it, or with another app's, is not a proof for this mini-program."""
    if isinstance(phone_info.get("watermark"), dict) and phone_info["watermark"].get("appid") == "APP":
        phone_info = {**phone_info, "watermark": {"appid": wechat.appid}}
    monkeypatch.setattr(wechat, "_with_token_retry", lambda path, payload: {"errcode": 0, "phone_info": phone_info})
    with pytest.raises(PlatformError) as err:
        wechat.get_phone_number("code")
    assert err.value.code == "bad_response"
