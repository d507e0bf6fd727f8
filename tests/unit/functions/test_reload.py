"""Hot reload's retry loop: a reload failing with an OSError other than running out of descriptors is
said in a line, and the watcher goes on; edits told by the supervisor of several serving processes."""

from __future__ import annotations

import asyncio
import errno

import pytest

from edgeruntime.functions import reload


async def test_a_reload_failing_with_an_os_error_is_logged_and_the_watcher_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[set[str]] = []

    def failing(names: set[str], *, report: bool = True) -> list[str]:
        calls.append(names)
        raise OSError(errno.ELOOP, "Too many levels of symbolic links", "/fns/loop1")

    assert await reload._reload(failing, {"hello"}, asyncio.Event()) == []
    assert calls == [{"hello"}]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"reloading hello failed: [Errno {errno.ELOOP}] Too many levels of symbolic links: '/fns/loop1'"
    ]


async def test_a_reload_that_works_returns_what_it_reloaded() -> None:
    def reload_them(names: set[str], *, report: bool = True) -> list[str]:
        return sorted(names)

    assert await reload._reload(reload_them, {"b", "a"}, asyncio.Event()) == ["a", "b"]


async def test_edits_told_by_the_supervisor_are_reloaded_in_order_and_only_the_reporting_process_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="edgeruntime")
    calls: list[set[str]] = []
    reports: list[bool] = []

    def reload_them(names: set[str], *, report: bool = True) -> list[str]:
        calls.append(names)
        reports.append(report)  # a syntax error is logged only where the edit is reported
        if "loop" in names:
            raise OSError(errno.ELOOP, "Too many levels of symbolic links", "/fns/loop")
        return sorted(names)

    edits: asyncio.Queue[tuple[set[str], bool]] = asyncio.Queue()
    for edit in [({"a"}, False), ({"b", "c"}, True), ({"loop"}, False), (set(), True)]:
        edits.put_nowait(edit)
    task = asyncio.get_running_loop().create_task(reload.apply_told_edits(edits, reload_them, asyncio.Event()))
    try:
        for _ in range(100):  # each edit takes a few turns of the loop
            if len(calls) == 4:
                break
            await asyncio.sleep(0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert calls == [{"a"}, {"b", "c"}, {"loop"}, set()]
    assert reports == [False, True, False, True]
    # Another process reported `a`; a reload that failed here is said here, reporting or not.
    assert [r.getMessage() for r in caplog.records] == [
        "reloaded b, c",
        f"reloading loop failed: [Errno {errno.ELOOP}] Too many levels of symbolic links: '/fns/loop'",
    ]
