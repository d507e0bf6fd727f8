"""The time the jobs system reads: the system clock, the database server's (Postgres), or a fake
one that tests move by hand."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["Clock", "ClockOffset", "FakeClock", "ServerClock", "SystemClock", "skew_limit"]

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


def _steady() -> float:
    # Never stepped, only slewed by NTP; CLOCK_BOOTTIME also counts a suspend, as the wall clock does.
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.monotonic() if boottime is None else time.clock_gettime(boottime)


class ServerClock:
    """The database server's clock, as this instance follows it (instances sharing a Postgres
    database judge leases and due times by it, whatever their hosts' clocks say).

    It reads a local clock that is never stepped (`steady`) plus its offset from the server's,
    measured by the jobs system at start and every minute (`follow`); until then, and while the
    server cannot be reached, it reads `host`, the clock this instance would use without it
    (`SystemClock`; a test's skewed one). A step of the host's clock does not move it; the
    server's clock does, at the next measurement.
    """

    def __init__(self, host: Clock | None = None) -> None:
        self.host: Clock = host or SystemClock()
        #: steady() - server time, give or take `_error`; at first the host's, not measured (infinite error).
        self._offset = _steady() - self.host.now()
        self._error = math.inf

    def now(self) -> float:
        return _steady() - self._offset

    @staticmethod
    def steady() -> float:
        """The local clock this one runs on (what `follow` takes a measurement of)."""
        return _steady()

    @property
    def measured(self) -> bool:
        """Whether it follows the server's clock yet (False: it reads the host's)."""
        return not math.isinf(self._error)

    def host_offset(self, steady: ClockOffset) -> ClockOffset:
        """How far the host's clock is from the server's, given `steady`'s offset from it."""
        return ClockOffset(self.host.now() - _steady() + steady.seconds, steady.error)

    def follow(self, steady: ClockOffset) -> bool:
        """Take a measurement of `steady`'s offset from the server's clock; returns whether it moved.

        It is taken when it is more precise than the one followed, or when the two certainly
        differ (the server's clock was stepped, or `steady` drifted): between two measurements
        that agree within their errors the time does not jitter, and it never moves back by more
        than those errors unless the server's clock did.
        """
        if steady.error < self._error or abs(steady.seconds - self._offset) > steady.error + self._error:
            self._offset, self._error = steady.seconds, steady.error
            return True
        return False


def skew_limit(lease_sec: float) -> float:
    """How far an instance's clock may be from the database server's before leases suffer.

    A lease is renewed every `lease_sec / 3`, so it has at least two thirds of its length left as
    its holder sees it; another instance whose clock is that much ahead takes it for expired. Two
    instances each within `lease_sec / 6` of the server differ by at most a third: half that margin,
    the rest for heartbeats that come late.
    """
    return min(lease_sec / 6, MAX_SKEW_SEC)
