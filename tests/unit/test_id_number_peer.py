"""R18 checked against a peer: python-stdnum's GB 11643 validator (``stdnum.cn.ric``).

20,000 random numbers, built to land on every branch (wrong check characters, impossible and
future birth dates, births before 1900, unknown province codes). The service and the peer must
agree on every one, with one deliberate exception: births before 1900, which the service refuses
(no insured person is that old, and such numbers are typing errors). The peer knows nothing of
the clock, so "not born after today" is applied to the birth date the peer itself decodes.

Region codes are drawn from the peer's own table of counties that never changed (the service
checks the province only: county codes are renamed, and old numbers stay valid for life).
"""

from __future__ import annotations

import random
from datetime import date

from stdnum import numdb
from stdnum.cn import ric

from app.errors import IdNumberInvalid
from app.security.id_number import EARLIEST_BIRTH_YEAR, PROVINCE_CODES, check_character, validate_id_number

TODAY = date(2026, 6, 30)
COUNT = 20_000
SEED = 20_261_207
UNKNOWN_PROVINCES = ["00", "10", "19", "29", "39", "49", "55", "66", "80", "99"]


def _stable_counties() -> list[str]:
    codes = []
    for _len, province, _hi, _props, counties in numdb.get("cn/loc").prefixes:
        for _clen, county, _chi, props, _children in counties:
            if not props.get("county", "").startswith("["):
                codes.append(province + county)
    return sorted(codes)


def _random_number(rng: random.Random, counties: list[str]) -> str:
    if rng.random() < 0.9:
        region = rng.choice(counties)
    else:  # a province code neither side knows
        region = rng.choice(UNKNOWN_PROVINCES) + f"{rng.randrange(10_000):04d}"
    year = rng.randint(1850, 2035)
    month = rng.randint(0, 13)
    day = rng.randint(0, 32) if rng.random() < 0.2 else rng.randint(1, 28)
    first17 = f"{region}{year:04d}{month:02d}{day:02d}{rng.randrange(1000):03d}"
    check = check_character(first17) if rng.random() < 0.7 else rng.choice("0123456789X")
    return first17 + check


def _service_accepts(number: str) -> bool:
    try:
        validate_id_number(number, today=TODAY)
        return True
    except IdNumberInvalid:
        return False


def _peer_accepts(number: str) -> bool:
    return ric.is_valid(number) and ric.get_birth_date(number) <= TODAY


def test_r18_agrees_with_python_stdnum_on_20000_random_numbers() -> None:
    rng = random.Random(SEED)
    counties = _stable_counties()
    assert len(counties) > 400 and {c[:2] for c in counties} <= PROVINCE_CODES
    disagreements: list[str] = []
    pre_1900 = accepted = future_refused = 0
    for _ in range(COUNT):
        number = _random_number(rng, counties)
        ours, peer = _service_accepts(number), _peer_accepts(number)
        accepted += ours
        if ours == peer:
            future_refused += (not ours and ric.is_valid(number) and ric.get_birth_date(number) > TODAY)
            continue
        if peer and not ours and ric.get_birth_date(number).year < EARLIEST_BIRTH_YEAR:
            pre_1900 += 1  # refused on purpose
            continue
        disagreements.append(number)
    print(f"seed={SEED}: {COUNT} numbers, {accepted} accepted, {future_refused} refused for a future birth date, "
          f"{pre_1900} pre-1900 refused on purpose, {len(disagreements)} disagreements")
    assert disagreements == [], f"seed={SEED}: first disagreements {disagreements[:10]}"
    # The sample really exercises the branches that matter.
    assert accepted > 3_000 and future_refused > 300 and pre_1900 > 300
