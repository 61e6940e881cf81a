"""Every error code the services can raise has its Chinese sentence in the console (issue 12)."""

from __future__ import annotations

import app.errors as domain_errors
from console.messages import ERRORS, error_text


def test_every_domain_error_code_has_a_chinese_text():
    codes = {value.code for value in vars(domain_errors).values()
             if isinstance(value, type) and issubclass(value, domain_errors.DomainError)}
    assert codes - set(ERRORS) == set()


def test_an_unknown_code_falls_back_to_a_generic_chinese_sentence():
    assert error_text("NO_SUCH_CODE") == ERRORS["INTERNAL_ERROR"]
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in text) for text in ERRORS.values())
