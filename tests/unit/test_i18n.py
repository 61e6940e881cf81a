"""Error messages in both languages from one catalogue (issue 10)."""

from __future__ import annotations

import re

import pytest

from app import errors
from app.i18n import default_messages, message_for, translate
from scripts import i18n as catalogue_tool

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize("code", sorted(default_messages()))
def test_every_error_code_has_an_english_and_a_chinese_text(code):
    english, chinese = message_for(code, "en"), message_for(code, "zh")
    assert english == default_messages()[code] and english.strip()
    assert chinese != english and CJK.search(chinese), (code, chinese)


def test_the_catalogue_translates_every_message_in_the_source_and_its_mo_is_compiled():
    """Fails when someone adds an English message without its Chinese text, or forgets to compile:
    run ``python -m scripts.i18n extract``, translate, ``python -m scripts.i18n compile``."""
    assert catalogue_tool.untranslated() == []
    assert catalogue_tool.MO.read_bytes() == catalogue_tool.compiled(catalogue_tool.read_catalogue())


def test_the_scan_finds_messages_given_to_errors_anywhere_in_the_service():
    found = catalogue_tool.source_messages()
    assert "No such binding." in found  # errors.NotFound("…") in a service
    assert "The ID number's check digit is wrong; please check for a typo." in found  # the _invalid helper
    assert "Not allowed while the binding is {status}." in found  # a template with a parameter


def test_a_custom_message_is_translated_with_its_parameters():
    error = errors.InvalidState("Not allowed while the binding is {status}.", params={"status": "ended"})
    assert error.message == "Not allowed while the binding is ended."
    assert translate(error.template, code=error.code, params=error.params, locale="zh") == \
        "绑定关系处于 ended 状态，不能进行此操作。"
    assert translate(error.template, code=error.code, params=error.params, locale="en") == error.message


def test_an_unknown_message_falls_back_to_the_codes_chinese_text():
    assert translate("Something nobody translated.", code="INVALID_STATE", locale="zh") == "当前状态下不能进行此操作。"
    unknown = "Something nobody translated."
    assert translate(unknown, code="INVALID_STATE", locale="en") == unknown


@pytest.mark.parametrize(("header", "expected"), [
    (None, "请先登录。"),
    ("zh-CN,zh;q=0.9,en;q=0.8", "请先登录。"),
    ("en-US,en;q=0.9,zh;q=0.8", "Authentication is required."),
    ("en", "Authentication is required."),
    ("fr-FR", "请先登录。"),
    ("en;q=0.3, zh-TW;q=0.9", "请先登录。"),
])
def test_accept_language_picks_the_message_language_and_the_code_never_changes(client, header, expected):
    response = client.get("/api/v1/me", headers={"Accept-Language": header} if header else {})
    assert response.status_code == 401
    assert response.get_json()["error"] == {"code": "UNAUTHENTICATED", "message": expected, "details": {}}
    assert response.headers["Content-Language"] == ("en" if expected.isascii() else "zh-CN")


def test_a_service_message_reaches_the_user_in_chinese(client, sandbox, demo):
    from tests.helpers import bearer, sign_in_wechat

    token = sign_in_wechat(client, sandbox)["access_token"]
    response = client.post("/api/v1/me/identity", json={"name": "张三", "id_number": "11010519491231002Y"},
                           headers=bearer(token))
    assert response.get_json()["error"]["message"] == "身份证号码须为 17 位数字加 1 位数字或 X。"
    english = client.post("/api/v1/me/identity", json={"name": "张三", "id_number": "11010519491231002Y"},
                          headers=bearer(token) | {"Accept-Language": "en"})
    assert english.get_json()["error"]["message"] == "The ID number must be 17 digits followed by a digit or X."
