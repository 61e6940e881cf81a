"""fen ↔ Alipay yuan-string conversion (STYLE §8)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.platforms.alipay import fen_to_yuan_str, yuan_str_to_fen


@pytest.mark.parametrize(
    ("fen", "text"),
    [
        (0, "0.00"),
        (1, "0.01"),
        (10, "0.10"),
        (1230, "12.30"),
        (100, "1.00"),
        (-5, "-0.05"),
        (-1230, "-12.30"),
        (123_456_789_012_345, "1234567890123.45"),
    ],
)
def test_fen_become_yuan_with_exactly_two_decimals(fen, text):
    assert fen_to_yuan_str(fen) == text


@pytest.mark.parametrize(
    ("text", "fen"),
    [
        ("12.30", 1230),
        ("12.3", 1230),
        ("12", 1200),
        ("0.01", 1),
        ("0", 0),
        ("-0.05", -5),
        ("-12.30", -1230),
        ("1234567890123.45", 123_456_789_012_345),
        ("0.29", 29),
        ("1.15", 115),
    ],
)
def test_yuan_strings_become_exact_fen(text, fen):
    assert yuan_str_to_fen(text) == fen


@pytest.mark.parametrize(
    "text",
    ["", "12.345", "1e3", " 12.30", "12.30 ", "+1", ".5", "5.", "12,30", "１２", "--1", "NaN", "1_000"],
)
def test_malformed_yuan_strings_are_rejected(text):
    with pytest.raises(ValueError):
        yuan_str_to_fen(text)


@pytest.mark.parametrize("value", [12.3, Decimal("12.30"), None, 1230])
def test_only_strings_are_parsed_as_yuan(value):
    with pytest.raises(TypeError):
        yuan_str_to_fen(value)


@pytest.mark.parametrize("value", [12.3, 12.0, True, "1230", Decimal(1230)])
def test_only_integers_are_formatted_as_fen(value):
    with pytest.raises(TypeError):
        fen_to_yuan_str(value)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_formatting_then_parsing_gives_back_the_same_fen(fen):
    assert yuan_str_to_fen(fen_to_yuan_str(fen)) == fen
