"""Schedules: 5-field, macros, `$`, `N seconds` on the epoch grid, time zones across DST."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from edgeruntime.jobs.schedule import parse_schedule


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, tz: str = "UTC") -> float:
    zone = UTC if tz == "UTC" else ZoneInfo(tz)
    return datetime(year, month, day, hour, minute, second, tzinfo=zone).timestamp()


def test_five_fields_latest_and_next() -> None:
    s = parse_schedule("*/15 * * * *")
    assert s.latest(ts(2027, 1, 1, 10, 14, 59)) == ts(2027, 1, 1, 10, 0)
    assert s.latest(ts(2027, 1, 1, 10, 15)) == ts(2027, 1, 1, 10, 15)
    assert s.next(ts(2027, 1, 1, 10, 15)) == ts(2027, 1, 1, 10, 30)
    assert s.next(ts(2027, 1, 1, 10, 14, 59)) == ts(2027, 1, 1, 10, 15)


@pytest.mark.parametrize(
    ("macro", "expected_next"),
    [
        ("@hourly", (2027, 1, 1, 11)),
        ("@daily", (2027, 1, 2)),
        ("@midnight", (2027, 1, 2)),
        ("@weekly", (2027, 1, 3)),
        ("@monthly", (2027, 2, 1)),
        ("@yearly", (2028, 1, 1)),
    ],
)
def test_macros(macro: str, expected_next: tuple[int, ...]) -> None:
    year, month, day, hour = (*expected_next, 0)[:4]
    assert parse_schedule(macro).next(ts(2027, 1, 1, 10, 30)) == ts(year, month, day, hour)


def test_dollar_is_last_day_of_month() -> None:
    assert parse_schedule("0 0 $ * *").next(ts(2027, 2, 3)) == ts(2027, 2, 28)


def test_seconds_on_the_epoch_grid() -> None:
    s = parse_schedule("30 seconds")
    assert s.every_sec == 30
    assert s.latest(1_800_000_029.9) == 1_800_000_000
    assert s.next(1_800_000_000) == 1_800_000_030
    # Two instances started at different moments derive the same ticks.
    assert {parse_schedule("7 seconds").latest(t) for t in (1_800_000_003.1, 1_800_000_004.9)} == {1_799_999_999}


def test_time_zone_and_dst() -> None:
    ny = "America/New_York"
    s = parse_schedule("30 1 * * *", ny)
    # Fall back 2024-11-03: 01:30 happens twice; Debian cron semantics fire once.
    first = s.next(ts(2024, 11, 3, 0, 0, tz=ny))
    assert first == ts(2024, 11, 3, 5, 30)  # 01:30 EDT
    assert s.next(first) == ts(2024, 11, 4, 6, 30)  # next day, 01:30 EST
    # Spring forward 2024-03-10: 02:30 does not exist; it runs at 03:00 local.
    assert parse_schedule("30 2 * * *", ny).next(ts(2024, 3, 10, 0, 0, tz=ny)) == ts(2024, 3, 10, 7, 0)
    # Berlin 10:00 is 09:00 UTC in winter.
    assert parse_schedule("0 10 * * *", "Europe/Berlin").next(ts(2027, 1, 1)) == ts(2027, 1, 1, 9)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("* * * * * *", "expected 5 fields"),
        ("0 25 * * *", "Bad hour"),
        ("@reboot", "not supported"),
        ("@sometimes", "unknown macro"),
        ("0 seconds", "1 to 59"),
        ("60 seconds", "1 to 59"),
        ("", "expected 5 fields"),
    ],
)
def test_invalid(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_schedule(value)


@pytest.mark.parametrize(
    ("zone", "fall_back_utc"),
    [
        ("America/New_York", datetime(2024, 11, 3, 6, tzinfo=UTC)),
        ("Europe/Berlin", datetime(2024, 10, 27, 1, tzinfo=UTC)),
    ],
)
def test_latest_in_the_hour_a_fall_back_repeats(zone: str, fall_back_utc: datetime) -> None:
    """Every tick of the repeated hour is the latest one in its quarter (the scheduler fires the
    latest tick): each local 01:15 (02:15 in Berlin) comes twice, an hour apart."""
    s = parse_schedule("*/15 * * * *", zone)
    start = fall_back_utc.timestamp()
    for quarter in range(4):  # the second pass of the hour, in standard time
        tick = start + quarter * 900
        assert s.latest(tick + 60) == tick
        assert s.latest(tick + 899) == tick
    assert s.latest(start - 1) == start - 900  # the last quarter of the first pass
