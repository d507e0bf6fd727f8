"""The bookkeeping threads run below the event loop: the SQLite writer and the log writer."""

from __future__ import annotations

import io
import os
import sys
import threading
from pathlib import Path

import pytest

from edgeruntime.core.logs import LogBuffer
from edgeruntime.core.threads import BOOKKEEPING_NICE, give_way_to_event_loop
from edgeruntime.jobs.sqlite import SQLiteStore

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="threads have nice values of their own on Linux only")


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def nice_of_a_thread_that(target: object) -> int:
    seen: list[int] = []

    def run() -> None:
        target()  # type: ignore[operator]
        seen.append(own_nice())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    return seen[0]


def test_a_thread_that_gives_way_runs_below_its_process_and_only_it() -> None:
    before = own_nice()
    assert nice_of_a_thread_that(give_way_to_event_loop) == min(19, before + BOOKKEEPING_NICE)
    assert own_nice() == before  # the calling thread's alone, not the process's


async def test_the_sqlite_writer_gives_way(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "edgeruntime.db")
    try:
        nice = await store._run(lambda _conn: own_nice())
    finally:
        await store.close()
    assert nice == min(19, own_nice() + BOOKKEEPING_NICE)


def test_the_log_writer_gives_way() -> None:
    buffer = LogBuffer(io.StringIO(), interval=3600)
    tid = buffer._thread.native_id
    assert tid is not None
    for _ in range(500):  # the thread lowers itself as it starts
        if os.getpriority(os.PRIO_PROCESS, tid) != own_nice():
            break
        threading.Event().wait(0.01)
    assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, own_nice() + BOOKKEEPING_NICE)
