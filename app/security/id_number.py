"""Resident ID numbers (公民身份号码, GB 11643-1999) — R18.

An ID number is 18 characters: a 6-digit administrative code, an 8-digit birth date, a 3-digit
sequence (odd for men, even for women) and a check character computed from the first 17 digits.
Messages never echo the number, since they can end up in responses and logs.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date

from app.errors import IdNumberInvalid

WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CHECK_CHARACTERS = "10X98765432"  # indexed by the weighted sum modulo 11
PROVINCE_CODES = frozenset(
    "11 12 13 14 15 21 22 23 31 32 33 34 35 36 37 41 42 43 44 45 46 "
    "50 51 52 53 54 61 62 63 64 65 71 81 82".split()
)
EARLIEST_BIRTH_YEAR = 1900

_SHAPE = re.compile(r"[0-9]{17}[0-9X]")


def check_character(first17: str) -> str:
    """The GB 11643 check character for the first 17 digits."""
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("expected exactly 17 ASCII digits")
    total = sum(int(digit) * weight for digit, weight in zip(first17, WEIGHTS, strict=True))
    return CHECK_CHARACTERS[total % 11]


def validate_id_number(raw: str, *, today: date) -> str:
    """Return the normalized ID number (NFKC, stripped, upper-case X) or raise IdNumberInvalid.

    Checks, in order: length, characters, province code, birth date (a real date, year ≥ 1900 and
    not after ``today``), check character. ``details["reason"]`` names the failed check for clients.

    ``today`` is required: the service passes the date of its own clock (the request's ``now``), so
    a number whose birth date lies in the future is refused everywhere, and tests can fix the date.
    """
    if not isinstance(today, date):
        raise TypeError("today must be a date")
    if not isinstance(raw, str):
        raise _invalid("characters", "The ID number must be text.")
    number = unicodedata.normalize("NFKC", raw).strip().upper()
    if len(number) != 18:
        raise _invalid("length", "The ID number must be 18 characters.")
    if not _SHAPE.fullmatch(number):
        raise _invalid("characters", "The ID number must be 17 digits followed by a digit or X.")
    if number[:2] not in PROVINCE_CODES:
        raise _invalid("province_code", "The ID number does not start with a known province code.")
    try:
        born = _encoded_birth_date(number)
    except ValueError:
        born = None
    if born is None or born.year < EARLIEST_BIRTH_YEAR or born > today:
        raise _invalid("birth_date", "The ID number does not contain a real birth date.")
    if check_character(number[:17]) != number[17]:
        raise _invalid("check_digit", "The ID number's check digit is wrong; please check for a typo.")
    return number


def birth_date(id_number: str) -> date:
    """The birth date encoded in an ID number already validated by ``validate_id_number``."""
    return _encoded_birth_date(_structurally_valid(id_number))


def age_on(id_number: str, on: date) -> int:
    """Age in completed years (周岁) on the given date of the holder of a valid ID number."""
    return completed_years(birth_date(id_number), on)


def completed_years(born: date, on: date) -> int:
    """Completed years between two dates (周岁); a 29 February birthday counts from 1 March."""
    if on < born:
        raise ValueError("the date is before the birth date")
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def province_code(id_number: str) -> str:
    """The 2-digit province code (e.g. ``"53"`` for Yunnan) of a valid ID number."""
    return _structurally_valid(id_number)[:2]


def make_id_number(region6: str, birth: date, seq3: int) -> str:
    """Build a valid ID number for tests and demo data, computing the check character.

    ``seq3`` is the 3-digit sequence (0–999); its parity encodes sex (odd: male).
    """
    if len(region6) != 6 or not region6.isascii() or not region6.isdigit():
        raise ValueError("region6 must be 6 digits")
    if region6[:2] not in PROVINCE_CODES:
        raise ValueError(f"region6 starts with an unknown province code {region6[:2]!r}")
    if not 0 <= seq3 <= 999:
        raise ValueError("seq3 must be between 0 and 999")
    if birth.year < EARLIEST_BIRTH_YEAR:
        raise ValueError(f"birth year must be {EARLIEST_BIRTH_YEAR} or later")
    first17 = f"{region6}{birth:%Y%m%d}{seq3:03d}"
    return first17 + check_character(first17)


def _structurally_valid(id_number: str) -> str:
    """The number normalized and checked for everything but the future (for numbers that were
    validated against the clock when they entered the service)."""
    return validate_id_number(id_number, today=date.max)


def _encoded_birth_date(number: str) -> date:
    return date(int(number[6:10]), int(number[10:12]), int(number[12:14]))


def _invalid(reason: str, message: str) -> IdNumberInvalid:
    return IdNumberInvalid(message, details={"reason": reason})
