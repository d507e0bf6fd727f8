"""Run history: every invocation and every wait_until task, written off the request path.

Observers only append one tuple per record (the row the store writes, in its column order) to an
in-memory buffer; a background task writes the buffer to the store in batches, one transaction
each. A request never waits for the store.

When the store is unavailable (connection lost, database locked or read-only), the batch being
written is kept and written again, first and in order, with backoff: records wait in the buffer
and reach the store late rather than never. Each batch carries an id the store writes with it, so
a batch whose COMMIT landed although its writer never heard so is not written twice. The buffer is
bounded: past `MAX_BUFFERED` records waiting, the oldest are dropped (logged once). A batch the
store rejects for its content is split until the rows at fault are found; only those are dropped.

No spill to a local file: for the default SQLite store that file would sit on the same disk as
the database that just failed, and for Postgres a second durable store (its own disk-full and
clean-up cases, one per instance, replayed by whom after a crash) would guard history only —
jobs and cron ticks are committed to the store before they run, so an outage loses none of them.
The bound covers ~50,000 requests: minutes of a busy instance.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Container

from edgeruntime.core.background import BackgroundTask
from edgeruntime.exceptions import StoreUnavailable
from edgeruntime.gateway.extensions import Invocation
from edgeruntime.jobs.outage import Outage, describe
from edgeruntime.jobs.store import JobStore, RunRow

__all__ = ["RunHistory"]

logger = logging.getLogger("edgeruntime.jobs")

FLUSH_INTERVAL_SEC = 0.25
#: Rows per store write. Each transaction costs a fixed part (pages rewritten, a commit), so
#: fewer, larger ones cost less per row; a full batch is written before the flush interval ends.
WRITE_BATCH = 2000
#: Records waiting to be written, at most (beyond the batch being written). Past it the oldest go.
MAX_BUFFERED = 50_000
#: While the store is unavailable, the failed batch is tried again after 0.5, 1, 2, 4, 5, 5, ... s.
RETRY_MIN_SEC = 0.5
RETRY_MAX_SEC = 5.0
#: At shutdown, how long an unavailable store is waited for before the records left are given up.
STOP_TIMEOUT_SEC = 5.0


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
        #: Batches taken from the buffer and not yet written, oldest first, each with its id: a
        #: batch is retried as it is, under the same id, until the store has it.
        self._pending: collections.deque[tuple[str, list[RunRow]]] = collections.deque()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        #: One flush at a time: the writer's, another caller's (a test, the dashboard) and the one at
        #: stop may overlap, and each writes the pending batches from the first, popping it once written.
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        #: Records dropped because the buffer was full (since start).
        self.dropped = 0
        #: Records the store rejected for their content (since start).
        self.rejected = 0
        self._dropped_reported = 0
        self._outage = Outage(logger, "run history: writing to the store", repeat_sec=None)
        #: Records written since the store came back from an outage, until the backlog is gone.
        self._late = 0
        self._batch_prefix = uuid.uuid4().hex
        self._batch_count = 0
        self.on_invocation: Callable[[Invocation], None] = self._invocation_observer(served)
        self.on_background: Callable[[BackgroundTask], None] = self._background_observer()

    @property
    def buffered(self) -> int:
        """Records waiting to be written (pending batches included)."""
        return len(self._rows) + sum(len(batch) for _, batch in self._pending)

    def add(self, row: RunRow) -> None:
        """Buffer one row (in `RUN_COLUMNS` order) for the next write."""
        if len(self._rows) >= WRITE_BATCH:
            self._batch_ready()
        self._rows.append(row)

    def _batch_ready(self) -> None:
        """A full batch is buffered: wake the writer; count what the bound is about to drop."""
        if len(self._rows) == MAX_BUFFERED:
            self.dropped += 1
            if self.dropped == self._dropped_reported + 1:
                logger.warning(
                    "run history: %d records are waiting for the store, the most kept; the oldest are"
                    " dropped until it catches up",
                    MAX_BUFFERED,
                )
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

    def _batch_id(self) -> str:
        self._batch_count += 1
        return f"{self._batch_prefix}-{self._batch_count}"

    async def flush(self, *, whole_batches: bool = False) -> bool:
        """Write the rows buffered when it was called (rows added meanwhile wait for the next flush).

        Returns False when the store was unavailable: what was not written stays buffered, in
        order, for the next flush. `whole_batches`: write only full batches and leave the rest for
        later (the writer was woken because a batch filled up, not because the interval passed).

        Not until the buffer is empty: under load rows keep arriving while a batch is written,
        and chasing them wrote a small batch (a transaction and a thread round trip each) right
        after another, at many times the cost per row of the full batches the interval collects.
        """
        async with self._flushing:
            return await self._flush(whole_batches)

    async def _flush(self, whole_batches: bool) -> bool:
        if not await self._write_pending():
            return False
        rows = self._rows
        left = len(rows)
        if whole_batches:
            left -= left % WRITE_BATCH
        while left > 0 and rows:
            size = min(WRITE_BATCH, left, len(rows))
            self._pending.append((self._batch_id(), [rows.popleft() for _ in range(size)]))
            left -= size
            if not await self._write_pending():
                return False
        if self._outage.failing:
            self._outage.recovered(f"{self._late} record(s) written late{self._dropped_since_report()}")
            self._late = 0
        elif self.dropped > self._dropped_reported and not rows:
            logger.warning("run history: caught up with the store%s", self._dropped_since_report())
        return True

    def _dropped_since_report(self) -> str:
        dropped, self._dropped_reported = self.dropped - self._dropped_reported, self.dropped
        return f", {dropped} dropped (the buffer was full)" if dropped else ""

    async def _write_pending(self) -> bool:
        """Write the pending batches in order; False (and they stay) when the store is unavailable."""
        pending = self._pending
        while pending:
            batch_id, batch = pending[0]
            try:
                await self.store.record_run_rows(batch, batch_id=batch_id)
            except StoreUnavailable as exc:
                self._outage.failed(
                    exc,
                    f"keeping up to {MAX_BUFFERED} records in memory and retrying (at most {RETRY_MAX_SEC:g} s apart)",
                )
                return False
            except Exception as exc:
                # The store refused these rows: find the ones at fault by halves (nothing of a
                # failed batch was written, so each half is a new batch) and drop only those.
                pending.popleft()
                if len(batch) > 1:
                    half = len(batch) // 2
                    pending.appendleft((self._batch_id(), batch[half:]))
                    pending.appendleft((self._batch_id(), batch[:half]))
                else:
                    self.rejected += 1
                    if self.rejected == 1 or self.rejected % 1000 == 0:
                        logger.error(
                            "run history: the store refused a record (%d so far), dropped: %s %r",
                            self.rejected,
                            describe(exc),
                            batch[0][:4],
                        )
                continue
            pending.popleft()
            if self._outage.failing:
                self._late += len(batch)
        return True

    def _retry_delay(self) -> float:
        return min(RETRY_MAX_SEC, RETRY_MIN_SEC * 2.0 ** (self._outage.failures - 1))

    async def _loop(self) -> None:
        while not self._stop.is_set():
            woken = False
            if self._outage.failing:
                # Rows keep arriving and waking the writer: the retry waits out its delay anyway.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._retry_delay())
            else:
                with contextlib.suppress(TimeoutError):
                    woken = await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            await self.flush(whole_batches=woken)

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="edgeruntime-run-history")

    async def stop(self, timeout_sec: float = STOP_TIMEOUT_SEC) -> None:
        """Write what is buffered; an unavailable store is retried for `timeout_sec`, then given up on.

        The writer is not cancelled in the middle of a write (that could leave a connection inside
        a transaction): it is asked to stop and finishes the write it is doing.
        """
        deadline = time.monotonic() + timeout_sec
        if self._task is not None:
            self._stop.set()
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self._task), max(0.0, timeout_sec))
            if not self._task.done():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        while self.buffered:
            if await self.flush():
                continue
            if time.monotonic() + self._retry_delay() > deadline:
                logger.error(
                    "run history: the store is still unavailable at shutdown; %d record(s) not written",
                    self.buffered,
                )
                return
            await asyncio.sleep(self._retry_delay())
