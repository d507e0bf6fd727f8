"""The time the jobs system reads: the system clock, or a fake one that tests move by hand."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["Clock", "ClockOffset", "FakeClock", "SystemClock", "skew_limit"]

#: The most two instances' clocks may differ by, whatever the lease: cron ticks and delayed jobs
#: come due early or late by the difference.
MAX_SKEW_SEC = 10.0


class Clock(Protocol):
    """Something that tells the time in POSIX seconds."""

    def now(self) -> float: ...


class SystemClock:
    """The host's clock."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that only moves when told: `advance(seconds)` or `set(instant)`.

    Example::

        clock = FakeClock(datetime(2026, 1, 1, 10, 0, tzinfo=UTC))
        async with EdgeClient("functions", clock=clock) as client:
            await client.invoke("signup")          # enqueues with delay=60
            clock.advance(60)
            await client.run_jobs()
    """

    def __init__(self, start: float | datetime | None = None) -> None:
        self._now = 0.0
        self.set(time.time() if start is None else start)

    def now(self) -> float:
        return self._now

    def set(self, instant: float | datetime) -> None:
        self._now = instant.timestamp() if isinstance(instant, datetime) else float(instant)

    def advance(self, seconds: float) -> None:
        self._now += seconds


@dataclass(frozen=True)
class ClockOffset:
    """How far this instance's clock is from the store's (Postgres: the server's): `seconds` ahead
    (negative: behind), give or take `error` (half the round trip it was measured over)."""

    seconds: float
    error: float

    def beyond(self, limit: float) -> bool:
        """Whether the clocks certainly differ by more than `limit` seconds."""
        return abs(self.seconds) - self.error > limit


def skew_limit(lease_sec: float) -> float:
    """How far an instance's clock may be from the database server's before leases suffer.

    A lease is renewed every `lease_sec / 3`, so it has at least two thirds of its length left as
    its holder sees it; another instance whose clock is that much ahead takes it for expired. Two
    instances each within `lease_sec / 6` of the server differ by at most a third: half that margin,
    the rest for heartbeats that come late.
    """
    return min(lease_sec / 6, MAX_SKEW_SEC)
