"""A worker: one booted instance of a function's module, serving concurrent requests.

``InlineWorker`` runs the module in the server's own process and event loop. The supervisor
(:mod:`edgeruntime.supervisor`) decides when a worker is booted, retired and ended.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import types
from collections.abc import Callable, Mapping

from edgeruntime import responses
from edgeruntime.background import BackgroundTask
from edgeruntime.context import ExecutionContext, WorkerState
from edgeruntime.discovery import FunctionSpec, load_function_module
from edgeruntime.exceptions import InvalidResponse
from edgeruntime.handlers import to_asgi
from edgeruntime.limits import Limits
from edgeruntime.types import ASGIApp, Handler, Receive, Scope, Send

__all__ = ["InlineWorker", "WorkerStatus"]

logger = logging.getLogger("edgeruntime")


class WorkerStatus(enum.StrEnum):
    """Where a worker is in its life."""

    #: Takes new requests.
    ACTIVE = "active"
    #: Takes no new requests; finishes what it has, then is dropped.
    RETIRED = "retired"
    #: Gone; its pending background work was cut.
    ENDED = "ended"


class InlineWorker:
    """A function module loaded in this process."""

    kind = "inline"

    def __init__(
        self,
        spec: FunctionSpec,
        env: Mapping[str, str],
        limits: Limits,
        observers: list[Callable[[BackgroundTask], None]] | None = None,
    ) -> None:
        self.spec = spec
        self.limits = limits
        self.state = WorkerState(spec.name, env, observers)
        self.status = WorkerStatus.ACTIVE
        self.in_flight = 0
        self.started_at = time.monotonic()
        self.module: types.ModuleType | None = None
        self.handler: Handler | None = None
        self._app: ASGIApp | None = None

    @property
    def id(self) -> str:
        return self.state.worker_id

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def idle(self) -> bool:
        """No request in flight and no pending background work."""
        return self.in_flight == 0 and not self.state.background.pending

    @classmethod
    def from_handler(cls, spec: FunctionSpec, handler: Handler, env: Mapping[str, str], limits: Limits) -> InlineWorker:
        """A worker for a handler that is already loaded (script mode, tests)."""
        worker = cls(spec, env, limits)
        worker.handler = handler
        worker._app = to_asgi(handler, spec.name)
        return worker

    def boot(self) -> None:
        """Import the function's module; raises BootError or WorkerCrashed."""
        started = time.perf_counter()
        self.state.loop = asyncio.get_running_loop()
        self.module, self.handler = load_function_module(self.spec, self.state)
        self._app = to_asgi(self.handler, self.spec.name)
        logger.info(
            "booted function %s in %.1f ms (worker %s)",
            self.name,
            (time.perf_counter() - started) * 1000,
            self.id[:8],
            extra={"function": self.name},
        )

    async def handle(self, scope: Scope, receive: Receive, send: Send, ctx: ExecutionContext) -> None:
        """Serve one request; handler errors become 500/502 responses, never exceptions."""
        assert self._app is not None, "boot() first"
        ctx.worker = self.state
        self.in_flight += 1
        token = ctx.activate()
        try:
            await self._app(scope, receive, send)
        except InvalidResponse as exc:
            logger.error("%s", exc, extra={"function": self.name})
            if not ctx.response_started:
                await responses.send_response(send, responses.BAD_GATEWAY)
        except Exception:
            logger.exception("function %s raised while handling %s %s", self.name, scope["method"], scope["path"])
            if not ctx.response_started:
                await responses.send_response(send, responses.INTERNAL_SERVER_ERROR)
        finally:
            ctx.deactivate(token)
            self.in_flight -= 1

    async def end(self, reason: str) -> list[str]:
        """End the worker: cut its pending background work; returns the names of the cut tasks."""
        self.status = WorkerStatus.ENDED
        cut = self.state.background.cut(reason)
        if cut:
            await asyncio.gather(*(t.task for t in cut), return_exceptions=True)
        return [t.name for t in cut]
