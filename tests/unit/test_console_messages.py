"""Every error code the services can raise has its Chinese sentence in the console (issue 12), from
the same catalogue as the API (issue 10)."""

from __future__ import annotations

import app.errors as domain_errors
from app.i18n import message_for
from console.messages import CONSOLE_ERRORS, error_text


def _chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_every_domain_error_code_has_a_chinese_text():
    codes = {value.code for value in vars(domain_errors).values()
             if isinstance(value, type) and issubclass(value, domain_errors.DomainError)}
    assert codes
    for code in codes:
        assert _chinese(error_text(code)), code
        assert error_text(code) == message_for(code, "zh")


def test_an_error_s_own_message_is_shown_translated():
    err = domain_errors.NotFound("No such person in the registry.")
    assert error_text(err.code, template=err.template, params=err.params) == "参保登记中没有此人。"


def test_console_situations_and_unknown_codes_have_chinese_texts():
    assert all(_chinese(text) for text in CONSOLE_ERRORS.values())
    assert _chinese(error_text("NO_SUCH_CODE"))
