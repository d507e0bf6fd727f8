"""`ServerClock`: the database server's time, read from a steady local clock and a measured offset."""

from __future__ import annotations

import time

from edgeruntime.jobs.clock import ClockOffset, FakeClock, ServerClock


def _server_at(delta: float, error: float) -> ClockOffset:
    """A measurement of the steady clock against a server whose clock is `delta` s ahead of this host's."""
    return ClockOffset(ServerClock.steady() - time.time() - delta, error)


def _reads(clock: ServerClock) -> float:
    """How far ahead of this host's real clock `clock` reads."""
    return clock.now() - time.time()


def test_it_reads_the_host_clock_until_measured_then_the_servers() -> None:
    clock = ServerClock(FakeClock(time.time() + 100))
    assert not clock.measured and abs(_reads(clock) - 100) < 0.1
    assert clock.follow(_server_at(5.0, 0.01))
    assert clock.measured and abs(_reads(clock) - 5.0) < 0.001
    # The host's clock is 95 s ahead of the server's, which the steady clock does not see.
    host = clock.host_offset(_server_at(5.0, 0.01))
    assert abs(host.seconds - 95.0) < 0.01 and host.error == 0.01


def test_a_new_measurement_moves_it_back_no_more_than_the_errors_unless_the_server_stepped() -> None:
    clock = ServerClock()
    clock.follow(_server_at(5.0, 0.01))
    # Agrees with the one followed, less precise: kept, the time does not jitter.
    assert not clock.follow(_server_at(5.015, 0.02))
    assert abs(_reads(clock) - 5.0) < 0.001
    # More precise: taken, back by 5 ms, within the two errors.
    assert clock.follow(_server_at(4.995, 0.001))
    assert abs(_reads(clock) - 4.995) < 0.001
    # Certainly apart (the server's clock was stepped back a minute): followed at once.
    assert clock.follow(_server_at(-55.0, 0.02))
    assert abs(_reads(clock) + 55.0) < 0.001
