"""One supervisor per function: boots its worker, routes requests to it, retires and ends it.

A boot error is kept to the function (503 for it, the others keep serving) and is retried on the
next request. The requests that arrive while a worker boots wait for that one boot, each within
its own idle timeout (504), and share its outcome; a boot that has not finished within
BOOT_TIMEOUT_SEC fails (503). A retired worker takes no new requests: they go to a fresh worker,
while the retired one finishes its in-flight requests and background work and is then dropped
(EarlyDrop).
A worker that reaches a hard limit is ended: its in-flight requests get 546 and its background
work is cut with the reason (see :mod:`edgeruntime.workers.lifecycle`).

Under process isolation a worker takes a few milliseconds to boot (forked from its function's
template; about 0.1 s where it is a fresh interpreter), and the successor of a worker is booted
when the worker nears retirement; the hand-over then does not wait for a boot.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from edgeruntime.config.settings import Settings
from edgeruntime.core.background import BackgroundTask
from edgeruntime.core.clock import LOOP_CLOCK, Clock
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.events import StopReason
from edgeruntime.core.metering import settle
from edgeruntime.core.types import Enqueue, Receive, Scope, Send
from edgeruntime.exceptions import BootError, FunctionError, IdleTimeout
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.functions.source import SourceError, check_source
from edgeruntime.workers.lifecycle import WorkerLifecycle
from edgeruntime.workers.request_limits import BodyLimit, IdleTimeouts, MessageLimit
from edgeruntime.workers.worker import InlineWorker, Worker, WorkerStatus

if TYPE_CHECKING:
    from edgeruntime.workers.process.sandbox import WorkerLauncher

__all__ = ["FunctionSupervisor", "WorkerObserver"]

#: Told when a worker retires or ends: ("retired" | "ended", function, why).
WorkerObserver = Callable[[str, str, StopReason], None]

logger = logging.getLogger("edgeruntime")

#: Boots a request makes in a row when each one is overtaken by a reload (a file saved again and
#: again while the function boots): the last one serves even so, and the next reload retires it.
MAX_STALE_BOOTS = 5


class FunctionSupervisor:
    """Owns the workers of one function."""

    def __init__(
        self,
        spec: FunctionSpec,
        settings: Settings,
        background_observers: list[Callable[[BackgroundTask], None]] | None = None,
        launcher: WorkerLauncher | None = None,
        worker_observers: list[WorkerObserver] | None = None,
        *,
        clock: Clock = LOOP_CLOCK,
        worker_factory: Callable[[], Worker] | None = None,
        enqueue: Enqueue | None = None,
    ) -> None:
        self.spec = spec
        #: Times the workers' wall clocks (a ManualClock in unit tests).
        self.clock = clock
        #: Makes a new, unbooted worker (default: inline or process, as the settings say).
        self.new_worker: Callable[[], Worker] = worker_factory or self._new_worker
        self.settings = settings
        self.background_observers = background_observers if background_observers is not None else []
        self.limits = settings.limits_for(spec.name)
        self._max_body_bytes = self.limits.max_request_body_bytes
        self.verify_jwt = settings.verify_jwt(spec.name)
        #: Called with ("retired" | "ended", function, reason) for every worker (metrics, dashboard).
        self.worker_observers: list[WorkerObserver] = worker_observers if worker_observers is not None else []
        #: Starts worker processes in the server's sandbox (shared with the app; process isolation).
        self.launcher = launcher
        self._owns_launcher = False
        #: Enqueues the jobs functions in worker processes enqueue (the app's jobs; process isolation).
        self.enqueue = enqueue
        self.worker: Worker | None = None
        self.retired: set[Worker] = set()
        #: Workers being ended (their requests are being failed, their background work cut).
        self.ending: set[Worker] = set()
        self.boots = 0
        #: Why the last ended workers ended, oldest first.
        self.shutdowns: collections.deque[StopReason] = collections.deque(maxlen=100)
        self.boot_error: str | None = None
        #: The syntax error in the function's files, found by compiling them (see :meth:`check`).
        self.source_error: SourceError | None = None
        self.last_invocation: float | None = None
        #: The boot the requests without an active worker wait for (one at a time).
        self._boot: asyncio.Task[Worker] | None = None
        self.idle_timeouts = IdleTimeouts(self.limits.request_idle_timeout_sec)
        #: The loop the last request was served on: `asyncio.current_task()` without one makes a
        #: system call on Python 3.11 (to find the running loop), with one it is a dict lookup.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lifecycles: dict[Worker, WorkerLifecycle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: The next worker, booting or booted, not yet serving (process isolation).
        self._successor: asyncio.Task[Worker] | None = None
        #: Workers being ended (a hard limit, an unused successor): shutdown lets them finish, a
        #: kill and a reap each, rather than cancel them (the end logs why the worker ended).
        self._finishing: set[asyncio.Task[Any]] = set()
        #: Counts reloads: a worker whose boot began before the last one serves old files.
        self._generation = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def workers(self) -> list[Worker]:
        active = [self.worker] if self.worker is not None else []
        return active + list(self.retired) + list(self.ending)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_finishing(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    def _new_worker(self) -> Worker:
        policy = self.settings.policy
        if self.settings.isolation == "process":
            # Imported here: an inline server never loads the worker-process modules.
            from edgeruntime.workers.process.parent import ProcessWorker
            from edgeruntime.workers.process.sandbox import WorkerLauncher, function_env, sandbox_for

            launcher = self.launcher
            if launcher is None:  # a supervisor made outside an app: its shutdown ends the templates
                launcher = self.launcher = WorkerLauncher(sandbox_for(self.settings), self.settings.functions_dir)
                self._owns_launcher = True
            return ProcessWorker(
                self.spec,
                function_env(self.settings, launcher.sandbox),
                self.limits,
                self.background_observers,
                policy,
                self.settings.log_format,
                launcher,
                enqueue=self.enqueue,
            )
        return InlineWorker(self.spec, self.settings.env, self.limits, self.background_observers, policy, self.clock)

    def configure(self, settings: Settings) -> None:
        """Serve with `settings` from now on (config.toml or .env changed): verify_jwt and the
        request limits apply to the next request, the rest to the next worker (see :meth:`reload`)."""
        self.settings = settings
        self.limits = settings.limits_for(self.spec.name)
        self._max_body_bytes = self.limits.max_request_body_bytes
        self.verify_jwt = settings.verify_jwt(self.spec.name)
        self.idle_timeouts.timeout_sec = self.limits.request_idle_timeout_sec

    def check(self, *, report: bool = True) -> SourceError | None:
        """Compile the function's files (at start and on reload): a syntax error is logged once,
        with its file and line, and kept as the boot error until the files are fixed.
        `report=False` keeps it without logging it (another serving process says it)."""
        error = check_source(self.spec)
        if error is not None:
            if error != self.source_error and report:
                logger.error("function %s cannot boot: %s", self.name, error, extra={"function": self.name})
            self.boot_error = f"function {self.name} failed to boot: {error}"
        elif self.source_error is not None:
            self.boot_error = None
        self.source_error = error
        return error

    async def _start(self) -> Worker:
        """Boot a new worker (raises FunctionError); it serves once :meth:`_activate` is called."""
        # The files may have been fixed since (without a file watcher): compiled again, not imported.
        if self.source_error is not None and self.check() is not None:
            raise BootError(self.name, self.boot_error or "")
        worker = self.new_worker()
        self.boots += 1
        try:
            await worker.start()
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

    def _activate(self, worker: Worker) -> Worker:
        """Start the limits of `worker` (its wall clock counts from now)."""
        lifecycle = WorkerLifecycle(
            self.name,
            worker.id,
            self.limits,
            self.settings.policy,
            retire=lambda reason: self._retire(worker, reason),
            end=lambda reason: self._end(worker, reason),
            beforeunload=lambda reason: self._spawn(worker.beforeunload(reason)),
            in_flight=lambda: worker.in_flight,
            prepare=self._prepare_successor if worker.prepares_successor else None,
            clock=self.clock,
        )
        self._lifecycles[worker] = lifecycle
        worker.watch(lifecycle)
        lifecycle.start()
        return worker

    async def acquire(self) -> Worker:
        """The active worker, booting a fresh one if there is none (raises FunctionError).

        The boot is a task of its own, which every request that comes meanwhile waits for: a
        request that stops waiting (its idle timeout, its client gone) leaves it going for the
        others and the next ones, and a boot that fails fails all of them (the next request boots
        again).
        """
        worker = self.worker
        if worker is not None and worker.status is WorkerStatus.ACTIVE:
            return worker
        boot = self._boot
        if boot is None:
            # Its own context: the boot is no request's (the module's top level runs outside any).
            boot = self._boot = asyncio.get_running_loop().create_task(
                self._boot_active(), name=f"edgeruntime-boot-{self.name}", context=contextvars.Context()
            )
            boot.add_done_callback(self._boot_over)
        return await asyncio.shield(boot)

    def _boot_over(self, boot: asyncio.Task[Worker]) -> None:
        if self._boot is boot:
            self._boot = None
        if not boot.cancelled():
            boot.exception()  # retrieved: its waiters raise it, and _start logged a boot error

    async def _boot_active(self) -> Worker:
        worker = self.worker
        if worker is not None and worker.status is WorkerStatus.ACTIVE:
            return worker
        if worker is not None and worker.status is WorkerStatus.ENDED:  # it crashed
            self.worker = None
            lifecycle = self._lifecycles.pop(worker, None)
            if lifecycle is not None:
                lifecycle.stop()
        booted = await self._boot_current()
        self.worker = self._activate(booted)
        return booted

    async def _boot_current(self) -> Worker:
        """The successor or a new worker, booted from the function's files as they are now."""
        for _ in range(MAX_STALE_BOOTS - 1):
            generation = self._generation
            worker = await self._take_successor() or await self._start()
            if generation == self._generation:
                return worker
            # A reload came while it booted: it read the files (and env) from before the reload.
            self._spawn_finishing(worker.end(StopReason.RELOAD))
        return await self._take_successor() or await self._start()

    def _prepare_successor(self) -> None:
        """Boot the worker that will take over from the active one, before it retires."""
        if self._successor is None:
            self._successor = asyncio.get_running_loop().create_task(
                self._start(), name=f"edgeruntime-boot-{self.name}"
            )
            # A boot error is logged by _start and met again by the boot that replaces it.
            self._successor.add_done_callback(lambda t: t.cancelled() or t.exception())

    @staticmethod
    async def _booted(successor: asyncio.Task[Worker]) -> Worker | None:
        """The successor once booted; None if it failed (logged by _start)."""
        try:
            return await asyncio.shield(successor)  # a cancelled waiter leaves the boot going
        except Exception:
            return None

    async def _take_successor(self) -> Worker | None:
        """The prepared successor, once booted; None if there is none or it failed (the boot that
        replaces it meets the error again) or died while waiting."""
        successor = self._successor
        if successor is None:
            return None
        worker = await self._booted(successor)
        if self._successor is not successor:  # dropped meanwhile (a reload): the drop ends it
            return None
        self._successor = None
        if worker is None or worker.status is not WorkerStatus.ACTIVE:
            return None
        return worker

    def _drop_successor(self) -> None:
        """The prepared successor is not wanted (the function's files changed, shutdown): end it."""
        successor, self._successor = self._successor, None
        if successor is not None:
            self._spawn_finishing(self._end_unused(successor))

    async def _end_unused(self, successor: asyncio.Task[Worker]) -> None:
        worker = await self._booted(successor)
        if worker is not None:
            await worker.end(StopReason.TERMINATION)

    async def dispatch(self, scope: Scope, receive: Receive, send: Send, ctx: ExecutionContext) -> None:
        """Serve one request on the active worker, within the request's own limits.

        Raises PayloadTooLarge (413), IdleTimeout (504), LimitExceeded (546), BootError (503) or
        WorkerCrashed (500) for the gateway to answer. A WebSocket connection is one request,
        from its upgrade to its close, its messages held to the function's message size.
        """
        self.last_invocation = time.time()
        body: BodyLimit | None = None
        if scope["type"] == "websocket":
            receive = MessageLimit(receive, send, self.spec.name, self.limits.max_websocket_message_bytes, ctx).receive
        else:
            body = BodyLimit(receive, self.spec.name, self._max_body_bytes, ctx)
            body.check_declared(scope)
            receive = body.receive
        task = None if self._loop is None else asyncio.current_task(self._loop)
        if task is None:  # the first request, or one on another loop (a test's)
            task = asyncio.current_task()
            assert task is not None
            self._loop = task.get_loop()
        ctx.task = task
        # From the request's arrival: the wait for a boot counts, as the platform's gateway counts it.
        self.idle_timeouts.start(ctx, task)
        worker = self.worker
        try:
            if worker is None or worker.status is not WorkerStatus.ACTIVE:  # else no coroutine for acquire()
                worker = await self.acquire()
            await worker.handle(scope, receive, send, ctx)
        except asyncio.CancelledError:
            if ctx.idle_expired and task.uncancel() == 0:
                timeout = self.idle_timeouts.timeout_sec
                raise IdleTimeout(self.name, f"{self.name} did not start its response within {timeout:g} s") from None
            raise
        finally:
            ctx.task = None  # background work may keep the context: not the finished task with it
            self.idle_timeouts.finish(ctx)
            if worker is not None and worker.status is WorkerStatus.RETIRED and worker.idle:
                self._spawn(self._drop(worker))
        if body is not None and body.exceeded:
            raise body.error()

    def _retire(self, worker: Worker, reason: StopReason) -> None:
        if worker.status is WorkerStatus.ACTIVE:
            worker.status = WorkerStatus.RETIRED
            self._tell("retired", reason)
        if self.worker is worker:
            self.worker = None
        if worker.status is WorkerStatus.RETIRED and worker not in self.retired:
            self.retired.add(worker)
            if worker.idle:
                self._spawn(self._drop(worker))
            else:
                worker.on_background_done(lambda _: self._drop_if_idle(worker))

    def _tell(self, event: str, reason: StopReason) -> None:
        for observer in self.worker_observers:
            try:
                observer(event, self.name, reason)
            except Exception:
                logger.exception("worker observer failed")

    def _drop_if_idle(self, worker: Worker) -> None:
        if worker.status is WorkerStatus.RETIRED and worker.idle and worker in self.retired:
            self._spawn(self._drop(worker))

    async def _drop(self, worker: Worker) -> None:
        """Early drop: a retired worker with nothing in flight and no pending background work."""
        if worker not in self.retired or worker.status is not WorkerStatus.RETIRED:
            return
        self.retired.discard(worker)
        self.ending.add(worker)
        await worker.beforeunload(StopReason.EARLY_DROP)
        logger.info("early termination has been triggered: isolate: %s", worker.id, extra={"function": self.name})
        await self._finish(worker, StopReason.EARLY_DROP)

    def _end(self, worker: Worker, reason: StopReason) -> None:
        """A hard limit: end `worker` now (its in-flight requests get 546)."""
        if worker.status is WorkerStatus.ENDED:
            return
        worker.status = WorkerStatus.ENDED
        worker.end_reason = reason
        if self.worker is worker:
            self.worker = None
        self.retired.discard(worker)
        self.ending.add(worker)
        self._spawn_finishing(self._finish(worker, reason))

    async def _finish(self, worker: Worker, reason: StopReason) -> list[str]:
        lifecycle = self._lifecycles.pop(worker, None)
        if lifecycle is not None:
            lifecycle.stop()
        self.shutdowns.append(reason)
        self._tell("ended", reason)
        try:
            cut = await worker.end(reason)
        finally:
            self.ending.discard(worker)
        settle()  # the worker's last steps may not be charged yet
        logger.log(
            logging.INFO if reason in (StopReason.EARLY_DROP, StopReason.TERMINATION) else logging.WARNING,
            "worker shutdown: isolate: %s reason: %s (cpu_time_used %.0f ms, %d background task(s) cut)",
            worker.id,
            reason,
            worker.meter.used_ms,
            len(cut),
            extra={"function": self.name},
        )
        return cut

    def reload(self) -> None:
        """Retire the active worker so the next request boots the function's files afresh.

        A worker booting meanwhile read the files before the reload: it is ended once booted
        and another boots in its place (see :meth:`acquire`).
        """
        self._generation += 1
        self._drop_successor()
        if self.worker is not None:
            self._retire(self.worker, StopReason.RELOAD)

    async def shutdown(self, timeout: float) -> list[str]:
        """Dispatch `beforeunload` (termination), wait up to `timeout` for background work, cut the rest.

        Returns a description of every task that was cut.
        """
        boot = self._boot
        if boot is not None:  # a worker process being started is killed; an inline boot's thread runs on
            boot.cancel()
            await asyncio.gather(boot, return_exceptions=True)
        ending = list(self.ending)  # already being ended (a limit, an early drop)
        workers = [w for w in self.workers if w not in self.ending]
        await asyncio.gather(*(w.beforeunload(StopReason.TERMINATION) for w in workers))
        deadline = time.monotonic() + timeout
        cut: list[str] = []
        for worker in workers:
            while (pending := worker.pending_background()) and (remaining := deadline - time.monotonic()) > 0:
                await asyncio.wait([t.task for t in pending], timeout=remaining)
        for worker in workers:
            pending = worker.pending_background()
            worker.status = WorkerStatus.ENDED
            worker.end_reason = StopReason.TERMINATION
            self.ending.add(worker)
            names = await self._finish(worker, StopReason.TERMINATION)
            cut.extend(
                f"{t.name} (function {t.function}, execution {t.execution_id})" for t in pending if t.name in names
            )
        self.worker = None
        self.retired.clear()
        self._drop_successor()
        if self._finishing:
            await asyncio.wait(set(self._finishing))
        for task in list(self._tasks):
            task.cancel()
        for worker in ending:  # their end may have been cancelled just now: ending twice is harmless
            await worker.end(StopReason.TERMINATION)
        self.ending.clear()
        if self._owns_launcher and self.launcher is not None:
            await self.launcher.close()
        self.idle_timeouts.close()
        return cut
