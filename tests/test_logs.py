from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from edgeruntime.core.logs import (
    ATOMIC_WRITE_BYTES,
    AccessLog,
    BufferedHandler,
    JSONFormatter,
    LogBuffer,
    TextFormatter,
)

# 2023-11-14 22:13:20.123 UTC, 03:43:20.123 the next day at UTC+5:30.
WHEN = 1_700_000_000.1234
EXEC_ID = "018bd0a3-6a5b-7c3d-8e9f-0123456789ab"
# A POSIX TZ string needs no tz database; the half hour shows the text line is in local time.
INDIA = "IST-5:30"


@pytest.fixture
def india(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", INDIA)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def stopped_clock(monkeypatch: pytest.MonkeyPatch, when: float) -> None:
    monkeypatch.setattr(time, "time", lambda: when)


def quiet_buffer(stream: io.StringIO) -> LogBuffer:
    """A buffer whose writer thread stays asleep long after the test: the test flushes it."""
    return LogBuffer(stream, interval=3600)


def written_access_lines(log_format: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Two access lines, one with a function and one without, queued at WHEN and written a minute later."""
    stream = io.StringIO()
    buffer = quiet_buffer(stream)
    access = AccessLog(buffer, log_format)
    stopped_clock(monkeypatch, WHEN)
    access("POST", "/functions/v1/hello", 200, 2.3456, "hello", EXEC_ID)
    access("GET", "/functions/v1/missing", 404, 0.04, None, EXEC_ID)
    stopped_clock(monkeypatch, WHEN + 61.5)  # the buffer is written later
    buffer.flush()
    return stream.getvalue()


def test_text_access_lines_carry_the_time_of_the_request(india: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert written_access_lines("text", monkeypatch) == (
        f"03:43:20.123 INFO    [hello] {EXEC_ID} POST /functions/v1/hello 200 2.3ms\n"
        f"03:43:20.123 INFO    {EXEC_ID} GET /functions/v1/missing 404 0.0ms\n"
    )


def test_json_access_lines(india: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert written_access_lines("json", monkeypatch) == (
        '{"time": "2023-11-14T22:13:20.123Z", "level": "info", "logger": "edgeruntime.access", '
        f'"function": "hello", "execution_id": "{EXEC_ID}", "message": "POST /functions/v1/hello 200 2.3ms", '
        '"method": "POST", "path": "/functions/v1/hello", "status": 200, "duration_ms": 2.346}\n'
        '{"time": "2023-11-14T22:13:20.123Z", "level": "info", "logger": "edgeruntime.access", '
        f'"function": null, "execution_id": "{EXEC_ID}", "message": "GET /functions/v1/missing 404 0.0ms", '
        '"method": "GET", "path": "/functions/v1/missing", "status": 404, "duration_ms": 0.04}\n'
    )


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_access_lines_keep_their_place_among_log_records(log_format: str) -> None:
    stream = io.StringIO()
    buffer = quiet_buffer(stream)
    handler = BufferedHandler(buffer)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    logger = logging.getLogger("tests.test_logs.order")
    logger.addHandler(handler)
    logger.propagate = False
    access = AccessLog(buffer, log_format)
    try:
        logger.warning("first")
        access("GET", "/functions/v1/a", 200, 1.0, "a", EXEC_ID)
        access("GET", "/functions/v1/b", 200, 1.0, "b", EXEC_ID)
        logger.warning("between")
        access("GET", "/functions/v1/c", 500, 1.0, "c", EXEC_ID)
        logger.warning("last")
    finally:
        logger.removeHandler(handler)
    buffer.flush()
    lines = stream.getvalue().splitlines()
    if log_format == "json":
        assert [json.loads(line)["message"] for line in lines] == [
            "first",
            "GET /functions/v1/a 200 1.0ms",
            "GET /functions/v1/b 200 1.0ms",
            "between",
            "GET /functions/v1/c 500 1.0ms",
            "last",
        ]
    else:
        assert [line.split(" ", 1)[1] for line in lines] == [
            "WARNING first",
            f"INFO    [a] {EXEC_ID} GET /functions/v1/a 200 1.0ms",
            f"INFO    [b] {EXEC_ID} GET /functions/v1/b 200 1.0ms",
            "WARNING between",
            f"INFO    [c] {EXEC_ID} GET /functions/v1/c 500 1.0ms",
            "WARNING last",
        ]


def test_the_writer_thread_writes_access_lines_on_its_own() -> None:
    stream = io.StringIO()
    access = AccessLog(LogBuffer(stream, interval=0.01), "text")
    access("GET", "/functions/v1/hello", 200, 1.25, "hello", EXEC_ID)
    deadline = time.monotonic() + 10
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue().endswith(f" INFO    [hello] {EXEC_ID} GET /functions/v1/hello 200 1.2ms\n")


def test_lines_still_buffered_at_exit_are_written() -> None:
    script = textwrap.dedent(
        f"""
        import logging, sys, time
        from edgeruntime.core.logs import AccessLog, BufferedHandler, LogBuffer, TextFormatter

        time.time = lambda: {WHEN!r}
        time.time_ns = lambda: {int(WHEN * 1e9)!r}  # what LogRecord reads from Python 3.13
        buffer = LogBuffer(sys.stdout, interval=3600)
        handler = BufferedHandler(buffer)
        handler.setFormatter(TextFormatter())
        logger = logging.getLogger("exit")
        logger.addHandler(handler)
        logger.warning("before the request")
        AccessLog(buffer, "text")("GET", "/functions/v1/hello", 200, 1.0, "hello", {EXEC_ID!r})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": INDIA},
        check=True,
    )
    assert result.stdout == (
        "03:43:20.123 WARNING before the request\n"
        f"03:43:20.123 INFO    [hello] {EXEC_ID} GET /functions/v1/hello 200 1.0ms\n"
    )


def test_a_line_that_cannot_be_formatted_is_reported_and_the_rest_are_written() -> None:
    def broken(line: tuple[object, ...]) -> str:
        raise ValueError("bad value")

    stream = io.StringIO()
    buffer = quiet_buffer(stream)
    buffer.write("before")
    buffer.write((broken, "payload"))
    buffer.write("after")
    buffer.flush()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "before" and lines[2] == "after"
    assert "could not be formatted" in lines[1] and "bad value" in lines[1] and "payload" in lines[1]
    buffer.write("later")
    buffer.flush()
    assert stream.getvalue().splitlines()[-1] == "later"


class _Writes(io.StringIO):
    """Records each write between flushes: what one system call would carry."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = []

    def write(self, text: str) -> int:
        self.pieces.append(text)
        return super().write(text)


def test_a_buffer_shared_with_other_processes_writes_whole_lines_of_at_most_pipe_buf() -> None:
    """Serving processes share one output: each write is whole lines, small enough not to be interleaved."""
    stream = _Writes()
    buffer = LogBuffer(stream, interval=3600, shared=True)
    lines = [f"line {i} " + "x" * (i % 300) for i in range(2000)] + ["é" * 3000, "y" * 10_000, "end"]
    for line in lines:
        buffer.write(line)
    buffer.flush()
    assert stream.getvalue() == "\n".join(lines) + "\n"
    assert len(stream.pieces) > 1
    for piece in stream.pieces:
        assert piece.endswith("\n")
        size = len(piece.encode())
        assert size <= ATOMIC_WRITE_BYTES or piece.count("\n") == 1, (size, piece[:40])
    # A line longer than that is written alone, whole.
    assert "y" * 10_000 + "\n" in stream.pieces
    # Not shared: one write for the lot, as before.
    single = _Writes()
    alone = LogBuffer(single, interval=3600)
    for line in lines:
        alone.write(line)
    alone.flush()
    assert single.pieces == ["\n".join(lines) + "\n"]


def test_a_text_log_shows_what_a_worker_wrote_on_one_line() -> None:
    """What a worker process wrote (a `contained` record, see forking.ProcessOutput) cannot start
    a line of its own in a text log: its control characters are escaped, its traceback indented."""
    message = "a\n12:00 ERROR [victim] x\x1b[2K"
    record = logging.LogRecord("edgeruntime.function", logging.ERROR, "", 0, message, None, None)
    record.function = "forger"
    record.execution_id = None
    record.contained = True
    traceback = "Traceback (most recent call last):\n12:00 ERROR [victim] y\n"
    record.traceback = traceback
    text = TextFormatter().format(record)
    lines = text.split("\n")
    assert lines[0].endswith("[forger] a\\n12:00 ERROR [victim] x\\x1b[2K")
    assert lines[1:] == ["    Traceback (most recent call last):", "    12:00 ERROR [victim] y"]
    data = json.loads(JSONFormatter().format(record))
    assert data["function"] == "forger" and data["traceback"] == traceback
