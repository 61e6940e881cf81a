"""API times (R20): rendered with +08:00, parsed only with an offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.errors import ValidationFailed
from app.timefmt import iso, parse_aware


def test_r20_a_utc_moment_is_shown_in_shanghai_time_with_milliseconds():
    assert iso(datetime(2025, 3, 1, 1, 30, 0, 123456, tzinfo=UTC)) == "2025-03-01T09:30:00.123+08:00"
    assert iso(datetime(2024, 12, 31, 16, 0, tzinfo=UTC)) == "2025-01-01T00:00:00.000+08:00"
    assert iso(None) is None


def test_r20_rendering_a_naive_datetime_is_a_programming_error():
    with pytest.raises(ValueError):
        iso(datetime(2025, 3, 1, 9, 30))


@pytest.mark.parametrize("text, expected", [
    ("2025-03-01T09:30:00+08:00", datetime(2025, 3, 1, 1, 30, tzinfo=UTC)),
    ("2025-03-01T01:30:00Z", datetime(2025, 3, 1, 1, 30, tzinfo=UTC)),
    ("2025-03-01T09:30:00.250+08:00", datetime(2025, 3, 1, 1, 30, 0, 250000, tzinfo=UTC)),
    (" 2025-02-28T20:30:00-05:00 ", datetime(2025, 3, 1, 1, 30, tzinfo=UTC)),
])
def test_r20_a_time_with_an_offset_is_read_as_utc(text, expected):
    parsed = parse_aware(text)
    assert parsed == expected and parsed.tzinfo is UTC


def test_r20_round_trip_keeps_the_moment():
    moment = datetime.now(timezone(timedelta(hours=-3)))
    assert parse_aware(iso(moment)) == moment.replace(microsecond=moment.microsecond // 1000 * 1000)


@pytest.mark.parametrize("text, reason", [
    ("2025-03-01T09:30:00", "no_offset"), ("2025-03-01", "no_offset"),
    ("01/03/2025 09:30", "malformed"), ("soon", "malformed"),
])
def test_r20_a_time_without_an_offset_or_not_iso_is_a_400(text, reason):
    with pytest.raises(ValidationFailed) as caught:
        parse_aware(text, field="service_time")
    assert caught.value.status == 400
    assert caught.value.details == {"field": "service_time", "reason": reason}


def test_r20_a_missing_time_is_a_400():
    with pytest.raises(ValidationFailed):
        parse_aware("")
