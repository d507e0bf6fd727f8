"""The serving supervisor's hang check, on stand-ins for serving processes (no processes started)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from dataclasses import dataclass, field

import pytest

from edgeruntime.serving.supervisor import ServingSupervisor


@dataclass(eq=False)
class StandIn:
    """What the hang check reads of a serving process, and the signals it got."""

    pid: int
    heard_at: float
    ready_at: float | None = 0.0
    stopping: bool = False
    hung: bool = False
    signals: list[int] = field(default_factory=list)

    def signal(self, signum: int) -> None:
        self.signals.append(signum)


def _supervisor(members: list[StandIn], timeout: float) -> ServingSupervisor:
    with socket.socket() as sock:
        supervisor = ServingSupervisor(
            ["true"], len(members), sock, graceful_exit_timeout_sec=1, hang_timeout_sec=timeout
        )
    supervisor.members = members  # type: ignore[assignment]
    return supervisor


async def _check_for(supervisor: ServingSupervisor, seconds: float) -> None:
    task = asyncio.get_running_loop().create_task(supervisor._find_hangs())
    await asyncio.sleep(seconds)
    supervisor._stop.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_only_a_ready_process_silent_for_the_timeout_is_killed_once() -> None:
    now = time.monotonic()
    silent = StandIn(1, heard_at=now - 10)
    talking = StandIn(2, heard_at=now + 60)
    starting = StandIn(3, heard_at=now - 10, ready_at=None)
    stopping = StandIn(4, heard_at=now - 10, stopping=True)
    supervisor = _supervisor([silent, talking, starting, stopping], timeout=0.2)
    await _check_for(supervisor, 0.3)
    assert silent.signals == [signal.SIGKILL] and silent.hung  # once, though checked several times
    assert talking.signals == starting.signals == stopping.signals == []


async def test_silence_while_the_supervisor_itself_was_held_up_does_not_count() -> None:
    clock = [1000.0]
    process = StandIn(1, heard_at=1000.0)
    supervisor = _supervisor([process], timeout=0.4)
    supervisor.monotonic = lambda: clock[0]
    task = asyncio.get_running_loop().create_task(supervisor._find_hangs())
    await asyncio.sleep(0)  # the check has started, at 1000.0
    clock[0] = 1060.0  # a minute passes with the supervisor stopped: nothing it could read
    await asyncio.sleep(0.25)  # one round of the check (every 0.1 s)
    assert process.signals == []
    for _ in range(8):  # then the process stays silent for longer than the timeout, round after round
        clock[0] += 0.1
        await asyncio.sleep(0.12)
    supervisor._stop.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert process.signals == [signal.SIGKILL]
