"""Logging a store operation that keeps failing: one line when it starts, a reminder at most once a
minute while it lasts, one line when it works again.

A loop that retries every 200 ms against a store that is down (or read-only) would otherwise write
a traceback each time: five a second, hiding everything else in the log.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import time
from collections.abc import Callable

from edgeruntime.exceptions import ConfigError, EdgeRuntimeError, StoreUnavailable

__all__ = ["Outage", "describe", "escaped", "store_unavailable"]

#: While an operation keeps failing, it is logged again this often (with how many attempts failed).
REPEAT_SEC = 60.0


def describe(exc: BaseException) -> str:
    """`exc` on one line: its type (unless it is one of edgeruntime's, written to be read as they
    are) and the first line of its message."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, EdgeRuntimeError) and first:
        return first
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def store_unavailable(exc: Exception) -> bool:
    """Whether a store write that raised `exc` may work later as it is (the store is down, locked,
    read-only), rather than having been refused for what it writes (text the database cannot hold,
    a constraint). The stores' `finish` raises its driver's errors; this sorts them as the stores
    do for run history, where they raise StoreUnavailable themselves.

    The store's: StoreUnavailable, reaching it (OSError, a connection that cannot be opened), and
    any error of the driver but a DataError or an IntegrityError (and SQLite's errors binding a
    value). Anything else (those, a ValueError encoding a text) is taken as the values' fault.
    """
    if isinstance(exc, StoreUnavailable | ConfigError | OSError):
        return True
    if isinstance(exc, sqlite3.Error):
        return not isinstance(
            exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError | sqlite3.InterfaceError
        )
    psycopg = sys.modules.get("psycopg")  # a psycopg error means it is imported
    if psycopg is not None and isinstance(exc, psycopg.Error):
        return not isinstance(exc, (psycopg.DataError, psycopg.IntegrityError))
    return False


def escaped(text: str) -> str:
    """`text` in printable ASCII (a NUL or a lone surrogate as `\\x00`, `\\udc80`): what any store
    takes, for an error the store refused as it was."""
    return text.encode("unicode_escape").decode("ascii")


class Outage:
    """The failure state of one retried operation (`what`, as the log names it).

    `repeat_sec` None: logged when it starts and when it ends only.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        repeat_sec: float | None = REPEAT_SEC,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.repeat_sec = repeat_sec
        self.clock = clock
        #: Failed attempts since the last success (0: the operation works).
        self.failures = 0
        self.since = 0.0
        self._logged_at = 0.0

    @property
    def failing(self) -> bool:
        return self.failures > 0

    def failed(self, exc: BaseException, retry: str = "") -> None:
        """Count a failed attempt; log it if it is the first, or the last line is old enough.

        `retry` says what happens next ("retrying in 0.2 s"), appended to the first line.
        """
        now = self.clock()
        self.failures += 1
        if self.failures == 1:
            self.since = self._logged_at = now
            self.logger.error("%s failed: %s%s", self.what, describe(exc), f"; {retry}" if retry else "")
            # The traceback, for whoever debugs with DEBUG logging on; once per outage.
            self.logger.debug("%s failed", self.what, exc_info=exc)
        elif self.repeat_sec is not None and now - self._logged_at >= self.repeat_sec:
            self._logged_at = now
            self.logger.error(
                "%s still failing after %.0f s (%d attempts): %s",
                self.what,
                now - self.since,
                self.failures,
                describe(exc),
            )

    def recovered(self, detail: str = "") -> float | None:
        """The operation worked: if it was failing, log that it is back; returns how long it failed."""
        if not self.failures:
            return None
        lasted = self.clock() - self.since
        self.logger.warning(
            "%s works again after %.1f s (%d failed attempts)%s",
            self.what,
            lasted,
            self.failures,
            f"; {detail}" if detail else "",
        )
        self.failures = 0
        return lasted
