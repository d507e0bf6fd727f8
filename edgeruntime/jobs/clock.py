"""The time the jobs system reads: the system clock, or a fake one that tests move by hand."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


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
