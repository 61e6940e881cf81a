"""R18: ID numbers have 18 characters, a known province, a real birth date and a GB 11643 check digit."""

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import IdNumberInvalid
from app.security.id_number import (
    PROVINCE_CODES,
    age_on,
    birth_date,
    check_character,
    completed_years,
    make_id_number,
    province_code,
    validate_id_number,
)

VALID = "11010519491231002X"  # the example printed in GB 11643-1999
TODAY = date(2025, 12, 31)  # the clock every check below runs against


def reason_for(raw: str, today: date = TODAY) -> str:
    with pytest.raises(IdNumberInvalid) as excinfo:
        validate_id_number(raw, today=today)
    return excinfo.value.details["reason"]


def test_r18_the_standards_own_example_is_valid() -> None:
    assert validate_id_number(VALID, today=TODAY) == VALID


def test_r18_check_digit_uses_the_gb11643_weights_and_table() -> None:
    assert check_character("11010519491231002") == "X"
    assert check_character("44052418800101001") == "4"


def test_r18_input_is_normalized_to_upper_case_x_without_surrounding_space() -> None:
    assert validate_id_number("  11010519491231002x\n", today=TODAY) == VALID


def test_r18_full_width_digits_are_normalized() -> None:
    full_width = VALID[:17].translate(str.maketrans("0123456789", "０１２３４５６７８９")) + "Ｘ"
    assert validate_id_number(full_width, today=TODAY) == VALID


@pytest.mark.parametrize("raw", ["", "1101051949123100", "11010519491231002X1"])
def test_r18_a_number_of_the_wrong_length_is_invalid(raw: str) -> None:
    assert reason_for(raw) == "length"


@pytest.mark.parametrize("raw", ["11010519491231002Y", "1101051949123X002X", "11010519491231-02X", "٣" * 18])
def test_r18_a_number_with_wrong_characters_is_invalid(raw: str) -> None:
    assert reason_for(raw) == "characters"


def test_r18_a_number_that_is_not_text_is_invalid() -> None:
    assert reason_for(110105194912310020) == "characters"  # type: ignore[arg-type]


@pytest.mark.parametrize("province", ["00", "10", "16", "24", "55", "66", "72", "83", "91"])
def test_r18_an_unknown_province_code_is_invalid(province: str) -> None:
    first17 = province + VALID[2:17]
    assert reason_for(first17 + check_character(first17)) == "province_code"


@pytest.mark.parametrize("birth", ["19490230", "19491301", "19490000", "18991231"])
def test_r18_an_impossible_birth_date_is_invalid(birth: str) -> None:
    first17 = "532621" + birth + "123"
    assert reason_for(first17 + check_character(first17)) == "birth_date"


def test_r18_a_birth_date_after_today_is_invalid() -> None:
    number = make_id_number("532621", date(2025, 3, 2), 123)
    assert validate_id_number(number, today=date(2025, 3, 2)) == number
    assert reason_for(number, today=date(2025, 3, 1)) == "birth_date"


def test_r18_a_wrong_check_digit_is_invalid() -> None:
    assert reason_for(VALID[:17] + "1") == "check_digit"


def test_r18_the_error_message_does_not_echo_the_number() -> None:
    with pytest.raises(IdNumberInvalid) as excinfo:
        validate_id_number(VALID[:17] + "1", today=TODAY)
    assert VALID[:17] not in excinfo.value.message
    assert excinfo.value.code == "ID_NUMBER_INVALID"
    assert excinfo.value.status == 422


def test_birth_date_and_province_come_from_the_number() -> None:
    assert birth_date(VALID) == date(1949, 12, 31)
    assert province_code(VALID) == "11"


def test_age_counts_completed_years() -> None:
    number = make_id_number("532621", date(2009, 6, 15), 1)
    assert age_on(number, date(2025, 6, 14)) == 15
    assert age_on(number, date(2025, 6, 15)) == 16


def test_a_leap_day_birthday_is_reached_on_the_first_of_march() -> None:
    assert completed_years(date(2008, 2, 29), date(2025, 2, 28)) == 16
    assert completed_years(date(2008, 2, 29), date(2025, 3, 1)) == 17


def test_age_before_birth_is_an_error() -> None:
    with pytest.raises(ValueError):
        completed_years(date(2020, 1, 2), date(2020, 1, 1))


@pytest.mark.parametrize(
    ("region6", "seq3"), [("53262", 1), ("5326a1", 1), ("992621", 1), ("532621", -1), ("532621", 1000)]
)
def test_make_id_number_refuses_bad_parts(region6: str, seq3: int) -> None:
    with pytest.raises(ValueError):
        make_id_number(region6, date(1980, 1, 1), seq3)


id_numbers = st.builds(
    make_id_number,
    st.builds(
        lambda province, rest: province + rest,
        st.sampled_from(sorted(PROVINCE_CODES)),
        st.text("0123456789", min_size=4, max_size=4),
    ),
    st.dates(min_value=date(1900, 1, 1), max_value=date(2025, 12, 31)),
    st.integers(min_value=0, max_value=999),
)


@given(id_numbers)
def test_r18_every_generated_number_validates(number: str) -> None:
    assert validate_id_number(number, today=TODAY) == number


@given(id_numbers, st.integers(min_value=0, max_value=17), st.sampled_from("0123456789X"))
def test_r18_any_single_character_change_is_invalid(number: str, position: int, replacement: str) -> None:
    if number[position] == replacement:
        replacement = "0" if replacement != "0" else "1"
    changed = number[:position] + replacement + number[position + 1:]
    with pytest.raises(IdNumberInvalid):
        validate_id_number(changed, today=TODAY)


def test_r18_the_clock_is_required() -> None:
    """No caller can forget the clock: without ``today`` the call is a programming error."""
    with pytest.raises(TypeError):
        validate_id_number(VALID)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        validate_id_number(VALID, today=None)  # type: ignore[arg-type]
