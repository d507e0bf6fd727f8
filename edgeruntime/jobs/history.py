"""Run history: every invocation and every wait_until task, written off the request path.

Observers only append to an in-memory buffer; a background task writes the buffer to the store
in batches. A request never waits for the store, and a slow or unavailable store drops the
oldest records (with a warning) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from edgeruntime.app import Invocation
from edgeruntime.background import BackgroundTask
from edgeruntime.jobs.store import JobStore, Run

__all__ = ["RunHistory"]

logger = logging.getLogger("edgeruntime.jobs")

FLUSH_INTERVAL_SEC = 0.25
BATCH_SIZE = 500
MAX_BUFFERED = 50_000


def invocation_run(record: Invocation) -> Run:
    ok = record.error is None and record.status < 500
    return Run(
        kind="invocation",
        function=record.function,
        trigger=record.trigger,
        execution_id=record.execution_id,
        status="succeeded" if ok else "failed",
        started_at=record.started_at,
        duration_ms=record.duration_ms,
        http_status=record.status,
        error=record.error,
    )


def background_run(task: BackgroundTask) -> Run:
    error = task.cut_reason if task.cut_reason else (repr(task.error) if task.error is not None else None)
    return Run(
        kind="background",
        function=task.function,
        trigger="wait_until",
        execution_id=task.execution_id,
        status=str(task.outcome),
        started_at=task.started_at,
        duration_ms=task.duration_ms,
        error=error,
        name=task.name,
    )


class RunHistory:
    """Buffers run records and writes them to the store in batches."""

    def __init__(self, store: JobStore, flush_interval: float = FLUSH_INTERVAL_SEC) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self._buffer: collections.deque[Run] = collections.deque(maxlen=MAX_BUFFERED)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def add(self, run: Run) -> None:
        if len(self._buffer) == MAX_BUFFERED:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                logger.warning("run history: %d record(s) dropped, the store is not keeping up", self.dropped)
        self._buffer.append(run)
        if len(self._buffer) >= BATCH_SIZE:
            self._wake.set()

    def on_invocation(self, record: Invocation) -> None:
        self.add(invocation_run(record))

    def on_background(self, task: BackgroundTask) -> None:
        self.add(background_run(task))

    async def flush(self) -> None:
        """Write everything buffered now."""
        while self._buffer:
            batch = [self._buffer.popleft() for _ in range(min(BATCH_SIZE, len(self._buffer)))]
            try:
                await self.store.record_runs(batch)
            except Exception:
                logger.exception("run history: writing %d record(s) failed; they are lost", len(batch))

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval)
            self._wake.clear()
            await self.flush()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="edgeruntime-run-history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
