"""Cron schedules in words, as the dashboard shows them."""

from __future__ import annotations

import pytest

from edgeruntime.dashboard.schedule_text import describe_schedule
from edgeruntime.jobs.schedule import parse_schedule


@pytest.mark.parametrize(
    ("schedule", "words"),
    [
        ("* * * * *", "every minute"),
        ("*/5 * * * *", "every 5 minutes"),
        ("0 10 * * *", "at 10:00, every day"),
        ("0 10 * * 1-5", "at 10:00, Monday to Friday"),
        ("30 2 1 * *", "at 02:30, on day 1 of the month"),
        ("0 0 $ * *", "at 00:00, on the last day of the month"),
        ("5 4 1 1 *", "at 04:05, on January 1"),
        ("0 9,17 * * *", "at 09:00, 17:00, every day"),
        ("15 * * * *", "every hour at minute 15"),
        ("0 */6 * * *", "every 6 hours at minute 0"),
        ("@daily", "at 00:00, every day"),
        ("@hourly", "every hour at minute 0"),
        ("@weekly", "at 00:00, Sunday"),
        ("30 seconds", "every 30 seconds"),
        ("1 seconds", "every second"),
        ("1-5 * 3 * 1", "at minute 1-5, day of month 3, weekday 1"),
    ],
)
def test_describe_schedule(schedule: str, words: str) -> None:
    assert describe_schedule(parse_schedule(schedule)) == words


def test_time_zone_is_named_unless_utc() -> None:
    assert (
        describe_schedule(parse_schedule("0 10 * * *", "America/New_York")) == "at 10:00, every day (America/New_York)"
    )
