"""Running out of file descriptors: told apart from other errors, answered 503, logged once a second.

A server at its descriptor limit (`ulimit -n`, systemd's `LimitNOFILE`) cannot accept a
connection, open a function's `index.py`, start a worker process or let a function open a file
or a socket. None of that is the function's fault, and it passes as soon as connections close:
the runtime answers 503 `RESOURCE_EXHAUSTED` (with `Retry-After`) instead of a boot error or a
500, and logs the condition in one line at most once a second, counting the lines it held back.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import resource
import time
from collections.abc import Callable

__all__ = ["EXHAUSTION_ERRNOS", "ExhaustionLog", "exhaustion", "exhaustion_log", "report_exhaustion"]

logger = logging.getLogger("edgeruntime")

#: Too many open files in this process (EMFILE) or in the whole system (ENFILE).
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
#: How far down an exception's causes `exhaustion` looks (an httpx error wraps httpcore's, which wraps the OSError).
_MAX_DEPTH = 16


def exhaustion(exc: BaseException | None) -> OSError | None:
    """The OSError saying the process or the system is out of file descriptors, if `exc` is or wraps one.

    Looks at `exc`, the chain of exceptions it was raised from or while handling (as a traceback
    shows them) and the members of exception groups.
    """
    pending = [exc]
    seen = 0
    while pending and seen < _MAX_DEPTH:
        current = pending.pop()
        if current is None:
            continue
        seen += 1
        if isinstance(current, OSError) and current.errno in EXHAUSTION_ERRNOS:
            return current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.append(current.__cause__ or (None if current.__suppress_context__ else current.__context__))
    return None


def _describe(error: OSError) -> str:
    if error.errno == errno.ENFILE:
        return "ENFILE: the system's file table is full"
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    return f"EMFILE: too many open files, limit {limit}"


class ExhaustionLog:
    """Logs running out of file descriptors at most once per `interval_sec`.

    The lines held back are counted: the next line says how many there were, and if the
    condition ends before the interval does, a last line (written once the interval has passed)
    says it.
    """

    def __init__(self, interval_sec: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_sec = interval_sec
        self.clock = clock
        #: Every report since the server started (logged or held back).
        self.total = 0
        self._last: float | None = None
        #: What failed since the last line, and how often.
        self._held_back: collections.Counter[str] = collections.Counter()
        self._summary: asyncio.TimerHandle | None = None

    def report(self, what: str, error: OSError, function: str | None = None) -> None:
        """`what` (e.g. "accepting a connection") failed with `error`, an exhaustion error."""
        self.total += 1
        now = self.clock()
        if self._last is not None and now - self._last < self.interval_sec:
            self._held_back[what] += 1
            self._schedule_summary(self._last + self.interval_sec - now)
            return
        held_back = self._take_held_back()
        self._last = now
        self._cancel_summary()
        more = f"; since the last line: {held_back}" if held_back else ""
        logger.error(
            "out of file descriptors (%s): %s failed; answering 503 until descriptors are free "
            "(raise the limit: ulimit -n, systemd LimitNOFILE)%s",
            _describe(error),
            what,
            more,
            extra={"function": function},
        )

    def _schedule_summary(self, delay_sec: float) -> None:
        if self._summary is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: the next line logged counts them
            return
        self._summary = loop.call_later(max(delay_sec, 0.0), self._write_summary)

    def _cancel_summary(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None

    def _take_held_back(self) -> str:
        """The failures held back since the last line ("" if none), and forget them."""
        held_back, self._held_back = self._held_back, collections.Counter()
        if not held_back:
            return ""
        total = sum(held_back.values())
        top = ", ".join(f"{what} x{count}" for what, count in held_back.most_common(3))
        rest = f", {len(held_back) - 3} more kind(s)" if len(held_back) > 3 else ""
        return f"{total} more failure(s) ({top}{rest})"

    def _write_summary(self) -> None:
        self._summary = None
        held_back = self._take_held_back()
        if held_back:
            self._last = self.clock()
            logger.error("out of file descriptors: %s", held_back, extra={"function": None})


#: The server's log of the condition (one per process).
exhaustion_log = ExhaustionLog()


def report_exhaustion(what: str, error: OSError, function: str | None = None) -> None:
    """Report to this process's `exhaustion_log` that `what` failed with `error` (see `ExhaustionLog.report`)."""
    exhaustion_log.report(what, error, function)
