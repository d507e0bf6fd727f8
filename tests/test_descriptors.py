"""Running out of file descriptors: telling it apart, and logging it at most once a second."""

from __future__ import annotations

import asyncio
import errno
import logging

import pytest

from edgeruntime.core.descriptors import ExhaustionLog, exhaustion

EMFILE = OSError(errno.EMFILE, "Too many open files")


class ConnectError(Exception):
    """Stands for an HTTP client's error that wraps the socket's."""


def test_exhaustion_is_found_in_the_chain_of_causes_and_in_groups() -> None:
    assert exhaustion(EMFILE) is EMFILE
    enfile = OSError(errno.ENFILE, "Too many open files in system")
    assert exhaustion(enfile) is enfile
    try:
        try:
            raise EMFILE
        except OSError as inner:
            raise ConnectError("connect failed") from inner
    except ConnectError as wrapped:
        assert exhaustion(wrapped) is EMFILE
    try:
        try:
            raise EMFILE
        except OSError:
            raise RuntimeError("while handling it") from None  # context suppressed: not found
    except RuntimeError as suppressed:
        assert exhaustion(suppressed) is None
    assert exhaustion(ExceptionGroup("tasks", [ValueError("x"), ConnectError("y")])) is None
    assert exhaustion(ExceptionGroup("tasks", [ValueError("x"), EMFILE])) is EMFILE
    for other in (OSError(errno.ENOENT, "No such file"), ValueError("Too many open files"), None):
        assert exhaustion(other) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("out of file descriptors")]


async def test_at_most_one_line_a_second_counting_what_was_held_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = ExhaustionLog(interval_sec=1.0, clock=clock)
    for _ in range(500):
        log.report("accepting a connection", EMFILE)
        clock.now += 0.001
    log.report("loading function hello", EMFILE, function="hello")
    assert len(lines(caplog)) == 1
    first = lines(caplog)[0]
    assert "accepting a connection failed" in first and "EMFILE" in first and "LimitNOFILE" in first
    clock.now += 0.6  # past the interval: the next report is logged, with what was held back
    log.report("accepting a connection", EMFILE)
    second = lines(caplog)[1]
    assert "since the last line: 500 more failure(s) (accepting a connection x499, loading function hello x1)" in second
    assert log.total == 502
    assert all(r.levelno == logging.ERROR and r.exc_info is None for r in caplog.records)


async def test_failures_held_back_at_the_end_are_summed_up_once_the_interval_passes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = ExhaustionLog(interval_sec=0.2)
    for _ in range(30):
        log.report("accepting a connection", EMFILE)
    assert len(lines(caplog)) == 1
    await asyncio.sleep(0.5)
    assert lines(caplog)[1:] == ["out of file descriptors: 29 more failure(s) (accepting a connection x29)"]
    await asyncio.sleep(0.3)
    assert len(lines(caplog)) == 2  # nothing more to say
