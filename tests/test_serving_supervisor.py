"""The serving supervisor: its hang check on stand-ins for serving processes (no processes
started), and its stop on stand-in processes."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from edgeruntime.serving.supervisor import ServingProcess, ServingSupervisor


@dataclass(eq=False)
class StandIn:
    """What the hang check reads of a serving process, and the signals it got."""

    pid: int
    heard_at: float
    ready_at: float | None = 0.0
    stopping: bool = False
    hung: bool = False
    signals: list[int] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)

    def signal(self, signum: int) -> None:
        self.signals.append(signum)

    def send(self, message: dict[str, Any]) -> bool:
        self.sent.append(message)
        return True


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


def test_an_edit_is_passed_to_every_running_process_and_reported_by_the_one_serving_longest() -> None:
    now = time.monotonic()
    newer = StandIn(1, heard_at=now, ready_at=now - 5)
    oldest = StandIn(2, heard_at=now, ready_at=now - 50)
    starting = StandIn(3, heard_at=now, ready_at=None)
    retiring = StandIn(4, heard_at=now, ready_at=now - 500, stopping=True)
    supervisor = _supervisor([newer, oldest], timeout=0)
    supervisor.running = cast(set[ServingProcess], {newer, oldest, starting, retiring})
    edited = {Path("/p/config.toml"), Path("/p/functions/.env")}
    supervisor.pass_edit(edited)
    changed = ["/p/config.toml", "/p/functions/.env"]
    assert oldest.sent == [{"type": "reload", "changed": changed, "report": True}]
    assert newer.sent == starting.sent == [{"type": "reload", "changed": changed, "report": False}]
    assert retiring.sent == []  # it serves no more: the new settings are not for it
    # None serving yet (all starting, say after a crash of every one): one of them reports.
    supervisor.running = cast(set[ServingProcess], {starting})
    supervisor.pass_edit(edited)
    assert starting.sent[-1]["report"] is True


def test_an_edit_of_the_functions_files_is_passed_on_as_a_config_edit_is_and_reported_by_the_same_process() -> None:
    now = time.monotonic()
    newer = StandIn(1, heard_at=now, ready_at=now - 5)
    oldest = StandIn(2, heard_at=now, ready_at=now - 50)
    retiring = StandIn(3, heard_at=now, ready_at=now - 500, stopping=True)
    supervisor = _supervisor([newer, oldest], timeout=0)
    supervisor.running = cast(set[ServingProcess], {newer, oldest, retiring})
    supervisor.pass_function_edit({"who", "_shared"})
    supervisor.pass_edit({Path("/p/config.toml")})
    assert oldest.sent == [
        {"type": "reload", "functions": ["_shared", "who"], "report": True},
        {"type": "reload", "changed": ["/p/config.toml"], "report": True},
    ]
    assert newer.sent == [{**message, "report": False} for message in oldest.sent]
    assert retiring.sent == []


STAND_IN = """
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: (time.sleep(0.5), os._exit(0)))  # drains for 0.5 s, then exits
control = socket.socket(fileno=int(sys.argv[sys.argv.index("--serving-process") + 1].split(",")[1]))
control.sendall(b'{"type": "ready"}\\n')
try:
    os.close(os.open(sys.argv[1], os.O_CREAT | os.O_EXCL))
except FileExistsError:
    time.sleep(20)  # serves until SIGTERM
else:
    time.sleep(0.2)
    os._exit(1)  # the first one fails once it serves: the supervisor starts another
"""


async def test_a_process_started_as_the_supervisor_stops_is_stopped_and_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while a failed serving process's replacement is being started: the replacement
    joins the running ones after the supervisor began to stop them (while the other one drains),
    and must be stopped and waited for too, not left serving after the supervisor returned."""
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    started: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec
    with socket.socket() as sock:
        supervisor = ServingSupervisor(
            [sys.executable, str(script), str(tmp_path / "failed-once")],
            2,
            sock,
            graceful_exit_timeout_sec=5,
            hang_timeout_sec=0,
        )

        async def slow_spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
            if len(started) == 2:  # the replacement: the supervisor is told to stop while it starts
                supervisor._stop.set()
                await asyncio.sleep(0.2)
            process = await spawn(*args, **kwargs)
            started.append(process)
            return process

        monkeypatch.setattr(asyncio, "create_subprocess_exec", slow_spawn)
        try:
            async with asyncio.timeout(30):
                assert await supervisor.run() == 0
            assert len(started) == 3  # while the other one drained, the replacement started
            codes = [p.returncode for p in started]
            assert None not in codes, f"a serving process still runs after the supervisor returned: {codes}"
            assert codes.count(1) == 1  # the one that failed; the others drained (or, just started, died of SIGTERM)
            assert all(code in (0, -signal.SIGTERM) for code in codes if code != 1)
        finally:
            for process in started:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
