"""Log lines: one access line per request, function output prefixed with the function name.

Every record carries the function name and execution id of the code that emitted it (taken from
the execution context when the caller did not pass them), so the lines of one request and of its
background work can be found together. ``--log-format json`` writes one JSON object per line.
"""

from __future__ import annotations

import atexit
import collections
import io
import json
import logging
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

from edgeruntime.core.context import current_context
from edgeruntime.core.threads import give_way_to_event_loop
from edgeruntime.core.worker_state import booting

__all__ = [
    "AccessLog",
    "ContextFilter",
    "FunctionOutput",
    "LogBuffer",
    "configure_logging",
    "json_line",
    "log_access",
    "log_backlog",
]


class ContextFilter(logging.Filter):
    """Adds `function` and `execution_id` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_context()
        if not hasattr(record, "function"):
            setattr(record, "function", ctx.function if ctx is not None else None)  # noqa: B010
        if not hasattr(record, "execution_id"):
            setattr(record, "execution_id", ctx.execution_id if ctx is not None else None)  # noqa: B010
        return True


class _Clock:
    """Formats timestamps to the millisecond, reusing the last one within the same millisecond.

    A busy server logs many lines per millisecond, and the part before the milliseconds changes
    once a second: most calls format nothing.
    """

    def __init__(self, pattern: str, utc: bool) -> None:
        self.pattern = pattern
        self.convert = time.gmtime if utc else time.localtime
        self._second = -1
        self._prefix = ""
        self._ms = -1
        self._stamp = ""

    def __call__(self, when: float) -> str:
        ms = int(when * 1000)
        if ms != self._ms:
            self._ms = ms
            second = ms // 1000
            if second != self._second:
                self._second = second
                self._prefix = time.strftime(self.pattern, self.convert(second))
            self._stamp = f"{self._prefix}.{ms % 1000:03d}"
        return self._stamp


#: How a control character in what a worker process wrote shows in a text log: escaped, so that
#: the text (a newline, a carriage return, a terminal's escape sequence) cannot start a line of
#: its own that looks like another function's.
_ESCAPED = {code: f"\\x{code:02x}" for code in (*range(32), 127) if code != 9} | {10: "\\n", 13: "\\r"}


class TextFormatter(logging.Formatter):
    """`12:00:01.123 INFO    [hello] 6f1c...: message`

    A record with a true `contained` attribute (what a worker process wrote, see
    :class:`edgeruntime.workers.process.forking.ProcessOutput`) is one line with its control
    characters escaped, and its `traceback` (text) follows it with each line indented.
    """

    clock = _Clock("%H:%M:%S", utc=False)

    def format(self, record: logging.LogRecord) -> str:
        stamp = self.clock(record.created)
        function = getattr(record, "function", None)
        where = f"[{function}] " if function else ""
        exec_id = getattr(record, "execution_id", None)
        ident = f"{exec_id} " if exec_id else ""
        message = record.getMessage()
        contained = getattr(record, "contained", False)
        if contained:
            message = message.translate(_ESCAPED)
        line = f"{stamp} {record.levelname:<7} {where}{ident}{message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        traceback = getattr(record, "traceback", None)
        if traceback and contained:
            line += "".join(f"\n    {part.translate(_ESCAPED)}" for part in traceback.rstrip("\n").split("\n"))
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for machines."""

    clock = _Clock("%Y-%m-%dT%H:%M:%S", utc=True)

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.clock(record.created) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "function": getattr(record, "function", None),
            "execution_id": getattr(record, "execution_id", None),
            "message": record.getMessage(),
        }
        for key in ("method", "path", "status", "duration_ms"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        elif getattr(record, "traceback", None):  # formatted already (by a worker process)
            data["traceback"] = str(getattr(record, "traceback"))  # noqa: B009
        return json.dumps(data, default=str)


class FunctionOutput(io.TextIOBase):
    """Stands in for sys.stdout/stderr: output written inside a function becomes log lines.

    Outside any function, writes go straight to the real stream, unless `every_line` is set
    (``--log-format json``): then they become log lines too (with the function's name while one
    is being imported), so nothing reaches the stream unformatted.
    """

    def __init__(self, stream: TextIO, level: int, every_line: bool = False) -> None:
        self.stream = stream
        self.level = level
        self.every_line = every_line
        self.logger = logging.getLogger("edgeruntime.function")
        self._partial: dict[str, str] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        ctx = current_context()
        logger = self.logger
        extra: dict[str, Any] | None = None
        if ctx is not None:
            key = ctx.execution_id
        elif self.every_line:
            worker = booting.get()  # a function's module printing while it is imported
            if worker is not None:
                key, extra = worker.worker_id, {"function": worker.function}
            else:
                key, logger = "", logging.getLogger("edgeruntime.output")
        else:
            return self.stream.write(text)
        buffered = self._partial.pop(key, "") + text
        *lines, rest = buffered.split("\n")
        if rest:
            self._partial[key] = rest
        for line in lines:
            logger.log(self.level, "%s", line, extra=extra)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


class LogBuffer:
    """Collects log lines and writes them from a background thread every `interval` seconds.

    A server writes a line per request; doing the write (and its flush) on the event loop for
    each line would cost more than the request itself. A line can also be queued unformatted, as
    a tuple whose first item formats it (see `write`): the writer formats it when it writes.
    """

    def __init__(self, stream: TextIO, interval: float = 0.05, *, shared: bool = False) -> None:
        self.stream = stream
        self.interval = interval
        #: Other processes write to the same stream (`--workers N`): see `_write`.
        self.shared = shared
        # A deque, not a list under a lock: append and popleft are atomic, so the event loop
        # never waits for the writer thread (nor takes a lock) to log a line.
        self._lines: collections.deque[str | tuple[Any, ...]] = collections.deque()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgeruntime-log", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    @property
    def backlog(self) -> int:
        """How many lines wait to be written."""
        return len(self._lines)

    def write(self, line: str | tuple[Any, ...]) -> None:
        """Queue `line`: a string, or a tuple `(format, *values)` written as `format(line)`."""
        self._lines.append(line)
        if not self._wake.is_set():  # cleared by each flush before it takes the lines
            self._wake.set()

    def flush(self) -> None:
        with self._flush_lock:  # the writer thread and atexit: one writer at a time keeps the order
            self._wake.clear()
            lines = self._lines
            taken = [lines.popleft() for _ in range(len(lines))]
            if taken:
                text = "\n".join([_format(line) for line in taken])
                try:
                    if self.shared:
                        self._write_whole_lines(text + "\n")
                    else:
                        self.stream.write(text + "\n")
                        self.stream.flush()
                except (OSError, ValueError):  # the stream went away at exit
                    pass

    def _write_whole_lines(self, text: str) -> None:
        """Write `text` in pieces of whole lines of at most ATOMIC_WRITE_BYTES, each flushed alone.

        Serving processes share their output (a pipe to the journal or a container's log): a
        write of at most PIPE_BUF bytes to a pipe is never interleaved with another process's,
        so no line is cut by another's. (A single line longer than that is written alone.)
        """
        start, size = 0, len(text)
        while start < size:
            end = self._piece_end(text, start, ATOMIC_WRITE_BYTES)
            if len(text[start:end].encode("utf-8", "replace")) > ATOMIC_WRITE_BYTES:  # multi-byte characters
                end = self._piece_end(text, start, ATOMIC_WRITE_BYTES // 4)
            self.stream.write(text[start:end])
            self.stream.flush()
            start = end

    @staticmethod
    def _piece_end(text: str, start: int, chars: int) -> int:
        """Where the piece of whole lines from `start`, at most `chars` long, ends (past its last
        newline); a line longer than that is a piece of its own."""
        end = start + chars
        if end >= len(text):
            return len(text)
        cut = text.rfind("\n", start, end)
        if cut >= start:
            return cut + 1
        return text.find("\n", end) + 1 or len(text)

    def _run(self) -> None:
        give_way_to_event_loop()
        while True:
            self._wake.wait()
            time.sleep(self.interval)
            self.flush()


def _format(line: str | tuple[Any, ...]) -> str:
    """The text of a queued line; one that cannot be formatted says why (the writer thread must go on)."""
    if isinstance(line, str):
        return line
    try:
        text: str = line[0](line)
    except Exception as exc:
        return f"(a log line could not be formatted: {exc!r}: {line[1:]!r})"
    return text


#: The largest write a pipe never interleaves with others' (POSIX PIPE_BUF, 4096 on Linux).
ATOMIC_WRITE_BYTES = 4096


class BufferedHandler(logging.Handler):
    """A logging handler that writes formatted records into a LogBuffer."""

    def __init__(self, buffer: LogBuffer) -> None:
        super().__init__()
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.buffer.write(self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.buffer.flush()


def log_backlog() -> int:
    """How many lines the `edgeruntime` loggers' buffer holds that are not written yet (0 where
    logging is not configured by :func:`configure_logging`)."""
    for handler in logging.getLogger("edgeruntime").handlers:
        if isinstance(handler, BufferedHandler):
            return handler.buffer.backlog
    return 0


AccessLogger = Any  # Callable[[str, str, int, float, str | None, str], None]


def log_access(
    method: str, path: str, status: int, duration_ms: float, function: str | None, execution_id: str
) -> None:
    """The access line through the logging module (the default; what tests capture)."""
    logging.getLogger("edgeruntime.access").info(
        "%s %s %d %.1fms",
        method,
        path,
        status,
        duration_ms,
        extra={
            "function": function,
            "execution_id": execution_id,
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(duration_ms, 3),
        },
    )


class AccessLog:
    """The server's access line, written through the LogBuffer (no LogRecord per request).

    The request path only queues the line's values; the buffer's writer formats them, off the
    event loop (about 0.3 µs on the loop per line instead of ~1 for text and ~5 for JSON).
    """

    def __init__(self, buffer: LogBuffer, log_format: str = "text") -> None:
        self.buffer = buffer
        self.json = log_format == "json"
        # Used by the buffer's writer only, under its flush lock: one thread at a time.
        self.text_clock = _Clock("%H:%M:%S", utc=False)
        self.json_clock = _Clock("%Y-%m-%dT%H:%M:%S", utc=True)
        self._format = self._json_line if self.json else self._text_line

    def __call__(
        self, method: str, path: str, status: int, duration_ms: float, function: str | None, execution_id: str
    ) -> None:
        self.buffer.write((self._format, time.time(), method, path, status, duration_ms, function, execution_id))

    def _text_line(self, entry: tuple[Any, ...]) -> str:
        _, now, method, path, status, duration_ms, function, execution_id = entry
        stamp = self.text_clock(now)
        if function:
            return f"{stamp} INFO    [{function}] {execution_id} {method} {path} {status} {duration_ms:.1f}ms"
        return f"{stamp} INFO    {execution_id} {method} {path} {status} {duration_ms:.1f}ms"

    def _json_line(self, entry: tuple[Any, ...]) -> str:
        _, now, method, path, status, duration_ms, function, execution_id = entry
        return json.dumps(
            {
                "time": self.json_clock(now) + "Z",
                "level": "info",
                "logger": "edgeruntime.access",
                "function": function,
                "execution_id": execution_id,
                "message": f"{method} {path} {status} {duration_ms:.1f}ms",
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(duration_ms, 3),
            }
        )


def configure_logging(
    log_format: str = "text", level: int = logging.INFO, capture_output: bool = True, *, shared: bool = False
) -> LogBuffer:
    """Set up the `edgeruntime` loggers for a server process; returns the buffer they write to.

    With ``log_format="json"`` every line the process writes is a JSON object: other libraries'
    loggers (watchfiles, hypercorn, uvicorn, asyncio; warnings and above), `warnings`, uncaught
    exceptions and anything printed outside a request go through the same handler. `shared`:
    other processes write to the same output (`--workers N`), so lines are written whole.
    """
    buffer = LogBuffer(sys.__stderr__ or sys.stderr, shared=shared)
    handler = BufferedHandler(buffer)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    # Function modules live under `_edgeruntime_functions`, so `logging.getLogger(__name__)` in a
    # function logs through the same handler.
    for name in ("edgeruntime", "_edgeruntime_functions"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    every_line = log_format == "json"
    if every_line:
        _route_everything_through(handler)
    if capture_output and not isinstance(sys.stdout, FunctionOutput):
        sys.stdout = FunctionOutput(sys.stdout, logging.INFO, every_line)
        sys.stderr = FunctionOutput(sys.stderr, logging.ERROR, every_line)
    return buffer


def _route_everything_through(handler: logging.Handler) -> None:
    """Make `handler` the only way out for what else the process would write to stderr."""
    root = logging.getLogger()
    root.handlers[:] = [handler]  # in place of logging's last-resort handler: bare text
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    crash = logging.getLogger("edgeruntime")

    def log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        crash.critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))
        handler.flush()

    def log_thread_crash(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            crash.error(
                "thread %s raised: %s",
                args.thread.name if args.thread is not None else "?",
                args.exc_value,
                exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
            )

    sys.excepthook = log_uncaught
    threading.excepthook = log_thread_crash


def json_line(message: str, level: int = logging.INFO, logger: str = "edgeruntime") -> str:
    """`message` as one line of ``--log-format json`` (for what is written before logging is set up)."""
    record = logging.makeLogRecord(
        {"name": logger, "levelno": level, "levelname": logging.getLevelName(level), "msg": message}
    )
    return JSONFormatter().format(record)
