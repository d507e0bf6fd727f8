"""A worker: one booted instance of a function's module, serving concurrent requests.

``InlineWorker`` runs the module in the server's own process and event loop. The supervisor
(:mod:`edgeruntime.workers.supervisor`) decides when a worker is booted, retired and ended.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import types
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

from starlette.requests import ClientDisconnect

from edgeruntime.core import responses
from edgeruntime.core.background import BackgroundTask
from edgeruntime.core.clock import LOOP_CLOCK, Clock
from edgeruntime.core.context import ExecutionContext, enter_context, leave_context
from edgeruntime.core.descriptors import exhaustion, report_exhaustion
from edgeruntime.core.events import BeforeUnloadEvent, StopReason
from edgeruntime.core.handlers import to_asgi
from edgeruntime.core.metering import CpuMeter, metered, run_metered
from edgeruntime.core.types import ASGIApp, Handler, Receive, Scope, Send
from edgeruntime.core.worker_state import WorkerState
from edgeruntime.exceptions import (
    InvalidResponse,
    LimitExceeded,
    PayloadTooLarge,
    WallClockLimitExceeded,
)
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.functions.loading import load_function_module
from edgeruntime.limits import Limits, Policy
from edgeruntime.workers.lifecycle import RequestBudget, WorkerLifecycle

__all__ = ["BOOT_TIMEOUT_SEC", "InlineWorker", "Worker", "WorkerStatus", "describe_error", "limit_exceeded"]

logger = logging.getLogger("edgeruntime")

#: Characters of a handler's exception kept in its run record (the log has the whole traceback).
MAX_ERROR_CHARS = 1000
#: How long a worker process may take to boot (its module's top level) before the boot fails: 503
#: BOOT_ERROR, as the edge runtime's "worker did not respond in time", and the process is killed.
BOOT_TIMEOUT_SEC = 30.0


def describe_error(exc: BaseException) -> str:
    """`exc` as a run record shows it: its type and message, not its traceback."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not turn the handler's 500 into a crash
        message = "(the message could not be read)"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def limit_exceeded(function: str, reason: StopReason) -> LimitExceeded:
    """What a request ended by `reason` raises (546); WallClockLimitExceeded, a TimeoutError too, for the wall clock."""
    if reason is StopReason.WALL_CLOCK:
        return WallClockLimitExceeded(function, reason)
    return LimitExceeded(function, reason)


class WorkerStatus(enum.StrEnum):
    """Where a worker is in its life."""

    #: Takes new requests.
    ACTIVE = "active"
    #: Takes no new requests; finishes what it has, then is dropped.
    RETIRED = "retired"
    #: Gone; its pending background work was cut.
    ENDED = "ended"


class Worker(Protocol):
    """What the supervisor needs of a worker, inline or in its own process."""

    kind: str
    #: Booting one takes long enough (a fresh interpreter: ~0.1 s) that the supervisor boots its
    #: successor before it retires, so the hand-over does not wait for a boot.
    prepares_successor: bool
    status: WorkerStatus
    #: Why the worker was ended, once it was (set with status ENDED).
    end_reason: StopReason | None
    in_flight: int
    #: Counts the worker's CPU (inline: the meter its lifecycle watches).
    meter: CpuMeter
    #: The runtime side of the worker in this process: env, listeners, background work.
    state: WorkerState
    #: The function's module, when it was loaded in this process (None for a worker process).
    module: types.ModuleType | None

    @property
    def id(self) -> str: ...

    @property
    def idle(self) -> bool: ...

    async def start(self) -> None:
        """Boot: raise BootError or WorkerCrashed if the module cannot be loaded, ResourceExhausted
        if the server is out of file descriptors."""

    async def handle(self, scope: Scope, receive: Receive, send: Send, ctx: ExecutionContext) -> None:
        """Serve one request; raises LimitExceeded or WorkerCrashed when the worker fails it."""

    async def beforeunload(self, reason: StopReason) -> None:
        """Dispatch `beforeunload` to the function's listeners (once per reason)."""

    def pending_background(self) -> list[BackgroundTask]:
        """The worker's `wait_until` work still running."""
        ...

    def on_background_done(self, callback: Callable[[BackgroundTask], None]) -> None:
        """Call `callback` whenever a background task of this worker ends."""

    def watch(self, lifecycle: WorkerLifecycle) -> None:
        """Report CPU (and memory) use to `lifecycle` from now on."""

    async def end(self, reason: StopReason) -> list[str]:
        """End the worker: fail its requests, cut its background work; returns the cut tasks' names."""
        ...


class InlineWorker:
    """A function module loaded in this process."""

    kind = "inline"
    #: Booting is importing a module in this process: fast enough to do when needed.
    prepares_successor = False

    def __init__(
        self,
        spec: FunctionSpec,
        env: Mapping[str, str],
        limits: Limits,
        observers: list[Callable[[BackgroundTask], None]] | None = None,
        policy: Policy = "per_worker",
        clock: Clock = LOOP_CLOCK,
    ) -> None:
        self.spec = spec
        #: Times the `per_request` budgets.
        self.clock = clock
        self.limits = limits
        self.policy = policy
        self.state = WorkerState(spec.name, env, observers)
        self.state.background.runner = self._run_background
        self.status = WorkerStatus.ACTIVE
        self.in_flight = 0
        self.started_at = time.monotonic()
        self.module: types.ModuleType | None = None
        self.handler: Handler | None = None
        self._app: ASGIApp | None = None
        self.meter = CpuMeter(spec.name)
        #: Why the worker was ended, once it was; its in-flight requests then get 546.
        self.end_reason: StopReason | None = None
        self._requests: dict[asyncio.Task[Any], ExecutionContext] = {}
        self._budgets: dict[ExecutionContext, RequestBudget] = {}
        #: `beforeunload` dispatches of per_request budgets, still running.
        self._unloading: set[asyncio.Task[None]] = set()
        if policy == "per_request":
            self.state.background.observers.append(self._task_ended)

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
        """Import the function's module in this thread, on its running event loop (a worker process
        boots so too); raises BootError, WorkerCrashed or ResourceExhausted."""
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

    async def start(self) -> None:
        """Import the function's module on the server's event loop (see :meth:`boot`).

        Not in a thread of its own, though top-level code that blocks then holds up the server:
        what the module makes at its top level is used by its handler on the loop's thread, and
        some of it only works in the thread that made it (a ``sqlite3`` connection, thread-local
        state). Process isolation is what bounds a boot (BOOT_TIMEOUT_SEC, then the process is
        killed)."""
        self.boot()

    def _run_background(self, coro: Coroutine[Any, Any, Any], ctx: ExecutionContext) -> Coroutine[Any, Any, Any]:
        return run_metered(coro, ctx.meter or self.meter)

    def _budget_unloading(self, budget: RequestBudget, reason: StopReason) -> None:
        """A request's budget is at 90 %: its `beforeunload`, as a per-request worker of the edge runtime gets."""
        unload = reason.unload_reason
        if unload is None or not self.state.listeners.get("beforeunload"):
            return
        event = BeforeUnloadEvent(unload, budget.ctx.execution_id)
        task = asyncio.get_running_loop().create_task(self.state.dispatch("beforeunload", event))
        self._unloading.add(task)
        task.add_done_callback(self._unloading.discard)

    def _budget_exceeded(self, budget: RequestBudget, reason: StopReason) -> None:
        ctx = budget.ctx
        self.state.background.cut(reason, of=ctx)
        for task, owner in self._requests.items():
            if owner is ctx:
                task.cancel()

    def _close_budget(self, ctx: ExecutionContext) -> None:
        budget = self._budgets.get(ctx)
        if budget is not None and (budget.reason is not None or (ctx not in self._requests.values() and not ctx.tasks)):
            budget.close()
            del self._budgets[ctx]

    async def handle(self, scope: Scope, receive: Receive, send: Send, ctx: ExecutionContext) -> None:
        """Serve one request; handler errors become 500/502 responses (503 when out of file descriptors).

        Raises LimitExceeded when a limit ended the request (its worker or its own budget).
        """
        app = self._app
        assert app is not None, "boot() first"
        ctx.worker = self.state
        self.in_flight += 1
        task = ctx.task or asyncio.current_task()  # (the supervisor found it)
        assert task is not None
        self._requests[task] = ctx
        if self.policy == "per_request":
            own = self._budgets[ctx] = RequestBudget(
                ctx, self.limits, self._budget_exceeded, self.clock, self._budget_unloading
            )
            meter = ctx.meter = own.meter
        else:
            meter = ctx.meter = self.meter
        token = enter_context(ctx)
        try:
            await metered(app(scope, receive, send), meter)
        except InvalidResponse as exc:
            logger.error("%s", exc, extra={"function": self.name})
            ctx.error = describe_error(exc)
            if not ctx.response_started:
                await responses.send_response(send, responses.BAD_GATEWAY)
        except PayloadTooLarge:
            raise
        except ClientDisconnect:
            # The client went away while the function read its body: not the function's fault, and
            # nobody is left to answer (the gateway records the request as a disconnect, 499).
            logger.debug(
                "client disconnected while function %s read the body of %s %s",
                self.name,
                scope.get("method", "GET"),
                scope["path"],
                extra={"function": self.name},
            )
        except OSError as exc:
            if not (ctx.client_disconnected or ctx.client_left):
                await self._failed(exc, scope, send, ctx)
                return
            # The server said the client had left (sending to it failed): not the function's error,
            # and any client could fill the log with them (recorded as a disconnect, 499).
            logger.debug(
                "the client of function %s left while it answered %s %s: %s",
                self.name,
                scope.get("method", "GET"),
                scope["path"],
                exc,
                extra={"function": self.name},
            )
        except Exception as exc:
            await self._failed(exc, scope, send, ctx)
        except asyncio.CancelledError:
            budget = self._budgets.get(ctx)
            reason = self.end_reason or (budget.reason if budget is not None else None)
            if reason is None or task.uncancel() > 0:
                raise
            logger.error(
                "user worker failed to respond: request has been cancelled by supervisor (%s)",
                reason,
                extra={"function": self.name},
            )
            raise limit_exceeded(self.name, reason) from None
        finally:
            leave_context(token)
            self.in_flight -= 1
            del self._requests[task]
            if self._budgets and ctx in self._budgets:  # else: closed once its background work ends
                self._close_budget(ctx)

    async def _failed(self, exc: Exception, scope: Scope, send: Send, ctx: ExecutionContext) -> None:
        """The function raised `exc` (in its `except`): a 500 if it had not answered, the error logged."""
        error = exhaustion(exc)
        if error is not None:  # the server's condition, not the function's bug: 503, one line a second
            report_exhaustion(f"function {self.name} serving a request", error, self.name)
            if not ctx.response_started:
                await responses.send_response(send, responses.RESOURCE_EXHAUSTED)
            return
        logger.exception(
            "function %s raised while handling %s %s", self.name, scope.get("method", "GET"), scope["path"]
        )
        ctx.error = describe_error(exc)
        if not ctx.response_started:
            await responses.send_response(send, responses.INTERNAL_SERVER_ERROR)

    def _task_ended(self, entry: BackgroundTask) -> None:
        for ctx in [c for c in self._budgets if c.execution_id == entry.execution_id]:
            self._close_budget(ctx)

    async def beforeunload(self, reason: StopReason) -> None:
        await self.state.dispatch_beforeunload(reason)

    def pending_background(self) -> list[BackgroundTask]:
        return list(self.state.background.pending)

    def on_background_done(self, callback: Callable[[BackgroundTask], None]) -> None:
        self.state.background.observers.append(callback)

    def watch(self, lifecycle: WorkerLifecycle) -> None:
        self.meter = lifecycle.meter()

    async def end(self, reason: StopReason) -> list[str]:
        """End the worker: its in-flight requests get 546, its pending background work is cut.

        Returns the names of the cut tasks.
        """
        self.status = WorkerStatus.ENDED
        self.end_reason = reason
        current = asyncio.current_task()
        for task in list(self._requests):
            if task is not current:
                task.cancel()
        cut = self.state.background.cut(reason)
        for budget in self._budgets.values():
            budget.close()
        self._budgets.clear()
        if cut:
            await asyncio.gather(*(t.task for t in cut), return_exceptions=True)
        return [t.name for t in cut]
