"""The runtime side of one function worker: its env, its event listeners and its background work.

While a function's module is imported, :data:`booting` holds its worker, so ``serve()`` and
``EdgeRuntime.on`` called at module level reach the right one. Code outside any function (a unit
test) runs in :func:`default_worker`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any

from edgeruntime.core.background import BackgroundTask, BackgroundWork
from edgeruntime.core.context import current_context
from edgeruntime.core.events import BeforeUnloadEvent, EventCallback, StopReason

__all__ = ["HANDLER_ATTRIBUTE", "WorkerState", "booting", "current_worker", "default_worker"]

logger = logging.getLogger("edgeruntime")

#: Name of the module attribute `serve()` leaves behind when called outside the runtime.
HANDLER_ATTRIBUTE = "__edgeruntime_handler__"


class WorkerState:
    """The runtime state of one booted function: env, listeners and background work."""

    def __init__(
        self,
        function: str,
        env: Mapping[str, str] | None = None,
        observers: list[Callable[[BackgroundTask], None]] | None = None,
    ) -> None:
        self.function = function
        self.worker_id = str(uuid.uuid4())
        self.env: Mapping[str, str] = env if env is not None else os.environ
        self.listeners: dict[str, list[EventCallback]] = {}
        self.background: BackgroundWork = BackgroundWork(self, observers)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.beforeunload_fired: set[str] = set()
        #: Handlers passed to `serve()` while this worker's module was being imported.
        self.handlers: list[Any] = []

    def add_listener(self, event: str, callback: EventCallback) -> None:
        self.listeners.setdefault(event, []).append(callback)

    def remove_listener(self, event: str, callback: EventCallback) -> None:
        callbacks = self.listeners.get(event, [])
        if callback in callbacks:
            callbacks.remove(callback)

    async def dispatch(self, event_name: str, event: Any) -> None:
        """Call every listener of `event_name`; a listener that raises is logged, never propagated."""
        for callback in list(self.listeners.get(event_name, ())):
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception(
                    "%s listener of function %s raised",
                    event_name,
                    self.function,
                    extra={"function": self.function},
                )

    async def dispatch_beforeunload(self, reason: StopReason) -> None:
        """Dispatch `beforeunload` once per reason, as the edge runtime does.

        Reasons that are no `beforeunload` reason (a reload, a crash) dispatch nothing.
        """
        unload = reason.unload_reason
        if unload is None or unload in self.beforeunload_fired:
            return
        self.beforeunload_fired.add(unload)
        await self.dispatch("beforeunload", BeforeUnloadEvent(unload))


#: The worker whose module is being imported right now (set while a function boots).
booting: ContextVar[WorkerState | None] = ContextVar("edgeruntime_booting", default=None)

_default_worker: WorkerState | None = None


def default_worker() -> WorkerState:
    """The worker that code outside any function (a unit test) runs in."""
    global _default_worker
    if _default_worker is None:
        _default_worker = WorkerState("<default>")
    return _default_worker


def current_worker() -> WorkerState:
    """The worker of the running code: the request's, the booting one, or the default."""
    ctx = current_context()
    if ctx is not None:
        return ctx.worker
    state = booting.get()
    if state is not None:
        return state
    return default_worker()
