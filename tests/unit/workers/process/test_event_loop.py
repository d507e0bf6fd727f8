"""A worker process runs the event loop its server runs: uvloop under Uvicorn, asyncio's otherwise."""

from __future__ import annotations

import asyncio

import uvloop

from edgeruntime.limits import Limits
from edgeruntime.workers.process.channel import framed
from edgeruntime.workers.process.child import event_loop_runner
from edgeruntime.workers.process.frames import Boot, Cancel
from edgeruntime.workers.process.parent import _event_loop


def boot(event_loop: str) -> Boot:
    return Boot("hello", "/srv/functions/hello", Limits(), "per_worker", "text", {}, event_loop)


def test_the_worker_runs_the_loop_its_boot_frame_names() -> None:
    assert event_loop_runner(framed(boot("uvloop"))) is uvloop.run
    assert event_loop_runner(framed(boot("asyncio"))) is asyncio.run
    assert event_loop_runner(framed(Cancel(1))) is asyncio.run  # no Boot frame: the channel says what is wrong
    assert event_loop_runner(b"\0\0\0\2xx") is asyncio.run


def test_the_server_names_its_own_loop() -> None:
    loop = uvloop.new_event_loop()
    try:
        assert _event_loop(loop) == "uvloop"
    finally:
        loop.close()
    plain = asyncio.new_event_loop()
    try:
        assert _event_loop(plain) == "asyncio"
    finally:
        plain.close()
