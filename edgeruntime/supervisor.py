"""One supervisor per function: boots its worker, routes requests to it, retires and ends it.

A boot error is kept to the function (503 for it, the others keep serving) and is retried on the
next request. A retired worker takes no new requests: they go to a fresh worker, while the
retired one finishes its in-flight requests and background work and is then dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from edgeruntime.background import BackgroundTask
from edgeruntime.context import ExecutionContext
from edgeruntime.discovery import FunctionSpec
from edgeruntime.exceptions import FunctionError
from edgeruntime.settings import Settings
from edgeruntime.types import Receive, Scope, Send
from edgeruntime.worker import InlineWorker, WorkerStatus

__all__ = ["FunctionSupervisor"]

logger = logging.getLogger("edgeruntime")


class FunctionSupervisor:
    """Owns the workers of one function."""

    def __init__(
        self,
        spec: FunctionSpec,
        settings: Settings,
        background_observers: list[Callable[[BackgroundTask], None]] | None = None,
    ) -> None:
        self.spec = spec
        self.settings = settings
        self.background_observers = background_observers if background_observers is not None else []
        self.limits = settings.limits_for(spec.name)
        self.verify_jwt = settings.verify_jwt(spec.name)
        self.worker: InlineWorker | None = None
        self.retired: set[InlineWorker] = set()
        self.boots = 0
        self.boot_error: str | None = None
        self.last_invocation: float | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def workers(self) -> list[InlineWorker]:
        active = [self.worker] if self.worker is not None else []
        return active + list(self.retired)

    def _boot(self) -> InlineWorker:
        worker = InlineWorker(self.spec, self.settings.env, self.limits, self.background_observers)
        self.boots += 1
        try:
            worker.boot()
        except FunctionError as exc:
            self.boot_error = str(exc)
            cause = exc.__cause__
            logger.error(
                "%s",
                exc,
                exc_info=(type(cause), cause, cause.__traceback__) if cause else None,
                extra={"function": self.name},
            )
            raise
        self.boot_error = None
        return worker

    def acquire(self) -> InlineWorker:
        """The active worker, booting a fresh one if there is none (raises FunctionError)."""
        worker = self.worker
        if worker is None or worker.status is not WorkerStatus.ACTIVE:
            if worker is not None:
                self._retire(worker)
            worker = self.worker = self._boot()
        return worker

    async def dispatch(self, scope: Scope, receive: Receive, send: Send, ctx: ExecutionContext) -> None:
        """Serve one request on the active worker."""
        self.last_invocation = time.time()
        worker = self.acquire()
        try:
            await worker.handle(scope, receive, send, ctx)
        finally:
            if worker.status is WorkerStatus.RETIRED and worker.idle:
                await self._drop(worker)

    def _retire(self, worker: InlineWorker) -> None:
        if worker.status is WorkerStatus.ACTIVE:
            worker.status = WorkerStatus.RETIRED
        if self.worker is worker:
            self.worker = None
        if worker.status is WorkerStatus.RETIRED:
            self.retired.add(worker)
            if worker.idle:
                asyncio.get_running_loop().create_task(self._drop(worker))
            else:
                self._watch_background(worker)

    def _watch_background(self, worker: InlineWorker) -> None:
        def finished(_: object) -> None:
            if worker.status is WorkerStatus.RETIRED and worker.idle:
                asyncio.get_running_loop().create_task(self._drop(worker))

        worker.state.background.observers.append(finished)

    async def _drop(self, worker: InlineWorker) -> None:
        if worker not in self.retired:
            return
        self.retired.discard(worker)
        await worker.state.dispatch_beforeunload("early_drop")
        await worker.end("early_drop")
        logger.info("early termination of a retired worker of %s", self.name, extra={"function": self.name})

    def reload(self) -> None:
        """Retire the active worker so the next request boots the function's files afresh."""
        if self.worker is not None:
            self._retire(self.worker)

    async def shutdown(self, timeout: float) -> list[str]:
        """Dispatch `beforeunload` (termination), wait up to `timeout` for background work, cut the rest.

        Returns a description of every task that was cut.
        """
        workers = self.workers
        await asyncio.gather(*(w.state.dispatch_beforeunload("termination") for w in workers))
        deadline = time.monotonic() + timeout
        cut: list[str] = []
        for worker in workers:
            await worker.state.background.wait(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            pending = list(worker.state.background.pending)
            names = await worker.end("shutdown")
            cut.extend(
                f"{t.name} (function {t.function}, execution {t.execution_id})" for t in pending if t.name in names
            )
        self.worker = None
        self.retired.clear()
        return cut
