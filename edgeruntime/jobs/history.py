"""Run history: every invocation and every wait_until task, written off the request path.

Observers only append one tuple per record (the row the store writes, in its column order) to an
in-memory buffer; a background task writes the buffer to the store in batches, one transaction
each. A request never waits for the store, and a slow or unavailable store drops the oldest
records (with a warning) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Container

from edgeruntime.core.background import BackgroundTask
from edgeruntime.gateway.extensions import Invocation
from edgeruntime.jobs.store import JobStore, RunRow

__all__ = ["RunHistory"]

logger = logging.getLogger("edgeruntime.jobs")

FLUSH_INTERVAL_SEC = 0.25
#: Rows per store write. Each transaction costs a fixed part (pages rewritten, a commit), so
#: fewer, larger ones cost less per row; a full batch is written before the flush interval ends.
WRITE_BATCH = 2000
MAX_BUFFERED = 50_000


class RunHistory:
    """Buffers run records and writes them to the store in batches.

    `on_invocation` and `on_background` are the observers the gateway calls: plain functions
    (closures over the buffer), because they run for every request on the event loop.
    `served`: only invocations of these function names are recorded (None: every invocation).
    """

    def __init__(
        self,
        store: JobStore,
        flush_interval: float = FLUSH_INTERVAL_SEC,
        served: Container[str] | None = None,
    ) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._rows: collections.deque[RunRow] = collections.deque(maxlen=MAX_BUFFERED)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.on_invocation: Callable[[Invocation], None] = self._invocation_observer(served)
        self.on_background: Callable[[BackgroundTask], None] = self._background_observer()

    def add(self, row: RunRow) -> None:
        """Buffer one row (in `RUN_COLUMNS` order) for the next write."""
        if len(self._rows) >= WRITE_BATCH:
            self._batch_ready()
        self._rows.append(row)

    def _batch_ready(self) -> None:
        """A full batch is buffered: wake the writer; count what the bound is about to drop."""
        if len(self._rows) == MAX_BUFFERED:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                logger.warning("run history: %d record(s) dropped, the store is not keeping up", self.dropped)
        self._wake.set()

    def _invocation_observer(self, served: Container[str] | None) -> Callable[[Invocation], None]:
        rows = self._rows
        append = rows.append
        batch_ready = self._batch_ready

        def record(inv: Invocation) -> None:
            if served is not None and inv.function not in served:
                return
            if len(rows) >= WRITE_BATCH:
                batch_ready()
            error = inv.error
            status = inv.status
            append(
                (
                    "invocation",
                    inv.function,
                    inv.trigger,
                    inv.execution_id,
                    "succeeded" if error is None and status < 500 else "failed",
                    inv.started_at,
                    inv.duration_ms,
                    status,
                    error,
                    None,
                )
            )

        return record

    def _background_observer(self) -> Callable[[BackgroundTask], None]:
        rows = self._rows
        append = rows.append
        batch_ready = self._batch_ready

        def record(task: BackgroundTask) -> None:
            if len(rows) >= WRITE_BATCH:
                batch_ready()
            error = task.cut_reason or (None if task.error is None else repr(task.error))
            append(
                (
                    "background",
                    task.function,
                    "wait_until",
                    task.execution_id,
                    str(task.outcome),
                    task.started_at,
                    task.duration_ms,
                    None,
                    error,
                    task.name,
                )
            )

        return record

    async def flush(self, *, whole_batches: bool = False) -> None:
        """Write the rows buffered when it was called (rows added meanwhile wait for the next flush).

        `whole_batches`: write only full batches and leave the rest for later (the writer was
        woken because a batch filled up, not because the flush interval passed).

        Not until the buffer is empty: under load rows keep arriving while a batch is written,
        and chasing them wrote a small batch (a transaction and a thread round trip each) right
        after another, at many times the cost per row of the full batches the interval collects.
        """
        rows = self._rows
        left = len(rows)
        if whole_batches:
            left -= left % WRITE_BATCH
        while left > 0:
            size = min(WRITE_BATCH, left)
            batch = [rows.popleft() for _ in range(size)]
            left -= size
            try:
                await self.store.record_run_rows(batch)
            except Exception:
                logger.exception("run history: writing %d record(s) failed; they are lost", len(batch))

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
                woken = True
            except TimeoutError:
                woken = False
            self._wake.clear()
            await self.flush(whole_batches=woken)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="edgeruntime-run-history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._rows:
            await self.flush()
