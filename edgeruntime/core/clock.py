"""The time the worker lifecycle reads: the event loop's clock, or a manual one that tests move.

A worker's wall-clock limits and a request's ``per_request`` budget are timers. They run on the
event loop (:class:`LoopClock`) unless a supervisor is given another :class:`Clock`; the unit
tests give it a :class:`ManualClock`, so a 400 s wall clock passes in a call to ``advance``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["LOOP_CLOCK", "Clock", "LoopClock", "ManualClock", "Timer"]


class Timer(Protocol):
    """A scheduled callback that can be called off."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic time in seconds, and callbacks at a time from now."""

    def time(self) -> float: ...

    def call_later(self, delay_sec: float, callback: Callable[..., object], *args: Any) -> Timer: ...


class LoopClock:
    """The running event loop's clock and timers (the default)."""

    def time(self) -> float:
        return asyncio.get_running_loop().time()

    def call_later(self, delay_sec: float, callback: Callable[..., object], *args: Any) -> Timer:
        return asyncio.get_running_loop().call_later(delay_sec, callback, *args)


#: The default clock of every lifecycle and request budget.
LOOP_CLOCK = LoopClock()


class _ManualTimer:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that only moves when told; its timers run inside :meth:`advance`.

    Example::

        clock = ManualClock()
        supervisor = FunctionSupervisor(spec, settings, clock=clock)
        ...
        clock.advance(200)   # half a 400 s wall clock: the worker retires
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._now

    def call_later(self, delay_sec: float, callback: Callable[..., object], *args: Any) -> Timer:
        timer = _ManualTimer(self._now + max(0.0, delay_sec), callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    @property
    def pending(self) -> int:
        """Timers scheduled and not cancelled."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        """Move the time forward, running every timer that falls due, in order, at its own time."""
        if seconds < 0:
            raise ValueError(f"a clock does not go back: advance({seconds})")
        until = self._now + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = when
            timer.callback(*timer.args)
        self._now = until
