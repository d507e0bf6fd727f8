"""ManualClock: timers that run when the test moves the time, in order, at their own time."""

from __future__ import annotations

import pytest

from edgeruntime.core.clock import ManualClock


def test_timers_run_in_order_at_their_own_time_and_only_when_due() -> None:
    clock = ManualClock(start=100.0)
    seen: list[tuple[str, float]] = []
    clock.call_later(5, lambda: seen.append(("five", clock.time())))
    clock.call_later(1, lambda name: seen.append((name, clock.time())), "one")
    clock.call_later(5, lambda: seen.append(("five again", clock.time())))
    clock.advance(0.5)
    assert seen == []
    clock.advance(10)
    assert seen == [("one", 101.0), ("five", 105.0), ("five again", 105.0)]
    assert clock.time() == 110.5
    assert clock.pending == 0


def test_cancelled_timers_do_not_run_and_timers_set_by_timers_run_when_due() -> None:
    clock = ManualClock()
    seen: list[str] = []
    clock.call_later(1, lambda: seen.append("cancelled")).cancel()
    clock.call_later(1, lambda: clock.call_later(1, lambda: seen.append("chained")))
    clock.advance(1.5)
    assert seen == []
    assert clock.pending == 1
    clock.advance(0.5)
    assert seen == ["chained"]


def test_the_clock_does_not_go_back() -> None:
    with pytest.raises(ValueError, match="does not go back"):
        ManualClock().advance(-1)
