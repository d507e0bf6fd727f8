"""Log lines: one access line per request, function output prefixed with the function name.

Every record carries the function name and execution id of the code that emitted it (taken from
the execution context when the caller did not pass them), so the lines of one request and of its
background work can be found together. ``--log-format json`` writes one JSON object per line.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from typing import Any, TextIO

from edgeruntime.context import current_context

__all__ = ["ContextFilter", "FunctionOutput", "configure_logging"]


class ContextFilter(logging.Filter):
    """Adds `function` and `execution_id` to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_context()
        if not hasattr(record, "function"):
            setattr(record, "function", ctx.function if ctx is not None else None)  # noqa: B010
        if not hasattr(record, "execution_id"):
            setattr(record, "execution_id", ctx.execution_id if ctx is not None else None)  # noqa: B010
        return True


class TextFormatter(logging.Formatter):
    """`12:00:01.123 INFO  [hello] 6f1c...: message`"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        function = getattr(record, "function", None)
        where = f"[{function}] " if function else ""
        exec_id = getattr(record, "execution_id", None)
        ident = f"{exec_id} " if exec_id else ""
        line = f"{stamp} {record.levelname:<7} {where}{ident}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object per line, for machines."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
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
        return json.dumps(data, default=str)


class FunctionOutput(io.TextIOBase):
    """Stands in for sys.stdout/stderr: output written inside a function becomes log lines.

    Outside any function, writes go straight to the real stream.
    """

    def __init__(self, stream: TextIO, level: int) -> None:
        self.stream = stream
        self.level = level
        self.logger = logging.getLogger("edgeruntime.function")
        self._partial: dict[str, str] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        ctx = current_context()
        if ctx is None:
            return self.stream.write(text)
        key = ctx.execution_id
        buffered = self._partial.pop(key, "") + text
        *lines, rest = buffered.split("\n")
        if rest:
            self._partial[key] = rest
        for line in lines:
            self.logger.log(self.level, "%s", line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", "utf-8")


def configure_logging(log_format: str = "text", level: int = logging.INFO, capture_output: bool = True) -> None:
    """Set up the `edgeruntime` loggers for a server process."""
    handler = logging.StreamHandler(sys.__stderr__)
    handler.setFormatter(JSONFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    # Function modules live under `_edgeruntime_functions`, so `logging.getLogger(__name__)` in a
    # function logs through the same handler.
    for name in ("edgeruntime", "_edgeruntime_functions"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    if capture_output and not isinstance(sys.stdout, FunctionOutput):
        sys.stdout = FunctionOutput(sys.stdout, logging.INFO)
        sys.stderr = FunctionOutput(sys.stderr, logging.ERROR)
