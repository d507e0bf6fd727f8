"""Cron schedules: 5-field expressions, `@daily`-style macros and pg_cron's `N seconds` form.

Five-field expressions are evaluated by cronsim (Debian cron semantics, including DST) in UTC or
in the job's IANA time zone. `N seconds` ticks lie on a fixed grid of the Unix epoch
(`floor(t / N) * N`), so every instance derives the same instants.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

from edgeruntime.config.project import CronConfig
from edgeruntime.exceptions import ConfigError

__all__ = ["MACROS", "Schedule", "parse_schedule", "validate_cron"]

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_SECONDS = re.compile(r"^\s*(\d+)\s*(?:s|sec|secs|second|seconds)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Schedule:
    """When a cron job fires: `every_sec` for the `N seconds` form, else a cron `expression`."""

    source: str
    expression: str | None = None
    every_sec: int | None = None
    timezone: str = "UTC"

    @property
    def zone(self) -> tzinfo:
        if self.timezone == "UTC":
            return UTC
        from zoneinfo import ZoneInfo  # a cron's zone: imported by the first one that names one

        return ZoneInfo(self.timezone)

    def latest(self, at: float) -> float:
        """The latest tick at or before `at` (POSIX seconds)."""
        if self.every_sec is not None:
            return float(math.floor(at / self.every_sec) * self.every_sec)
        assert self.expression is not None
        from cronsim import CronSim  # only where a cron has an expression, not in every server's start

        # cronsim's reverse iteration yields ticks strictly before its start: start at the next
        # minute. Made from UTC: a local time plus a timedelta loses `fold`, and in the hour a
        # fall-back repeats the search would start in its first pass, an hour early.
        probe = datetime.fromtimestamp(math.floor(at / 60) * 60 + 60, UTC).astimezone(self.zone)
        for tick in CronSim(self.expression, probe, reverse=True):
            if tick.timestamp() <= at:
                return tick.timestamp()
        raise ConfigError(f"schedule {self.source!r} never fires")  # pragma: no cover - cronsim raises first

    def next(self, after: float) -> float:
        """The first tick strictly after `after` (POSIX seconds)."""
        if self.every_sec is not None:
            return float((math.floor(after / self.every_sec) + 1) * self.every_sec)
        assert self.expression is not None
        from cronsim import CronSim

        start = datetime.fromtimestamp(math.floor(after), self.zone)
        return next(iter(CronSim(self.expression, start))).timestamp()


def parse_schedule(value: str, timezone: str = "UTC") -> Schedule:
    """Parse `value`; raises ValueError with the reason when it is not a schedule."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from cronsim import CronSim, CronSimError

    try:
        zone_ok = timezone == "UTC" or ZoneInfo(timezone) is not None
    except (ZoneInfoNotFoundError, ValueError):
        zone_ok = False
    if not zone_ok:
        raise ValueError(f"unknown time zone {timezone!r}")
    text = value.strip()
    if match := _SECONDS.match(text):
        every = int(match.group(1))
        if not 1 <= every <= 59:
            raise ValueError("an `N seconds` schedule needs 1 to 59 seconds (pg_cron)")
        return Schedule(value, every_sec=every, timezone=timezone)
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise ValueError("@reboot is not supported")
        if text.lower() not in MACROS:
            raise ValueError(f"unknown macro; expected one of {', '.join(MACROS)}")
        text = MACROS[text.lower()]
    fields = text.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 fields (minute hour day month weekday), got {len(fields)}")
    text = " ".join("L" if f == "$" else f for f in fields)
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(str(exc) or "invalid cron expression") from None
    return Schedule(value, expression=text, timezone=timezone)


def validate_cron(cron: CronConfig) -> Schedule:
    """The schedule of `[cron.<name>]`; ConfigError naming the job and the value when invalid."""
    try:
        return parse_schedule(cron.schedule, cron.timezone)
    except ValueError as exc:
        bad = cron.timezone if "time zone" in str(exc) else cron.schedule
        key = "timezone" if "time zone" in str(exc) else "schedule"
        raise ConfigError(f"[cron.{cron.name}] {key} = {bad!r}: {exc}") from None
