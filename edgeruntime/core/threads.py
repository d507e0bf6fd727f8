"""The runtime's threads: the bookkeeping threads that give way to the event loop, and the threads
sync handlers run in.

The bookkeeping threads (the SQLite writer, the log writer) do work no request waits for: writing
the run history, writing log lines. When one of them and the event loop want the same core (one
core per serving process, or a benchmark pinning the server to one), the scheduler shares it
between them in slices of a few milliseconds, and a request the loop has in hand waits for the
slice to end. On Linux each thread has its own nice value: these threads run BOOKKEEPING_NICE
steps below the process, so the loop takes the core whenever it has work, and they still get
about a tenth of it when it is busy (what they need under the heaviest load measured: ~6 % for
the run history of 13,000 requests a second).

A sync handler (``def handler``) runs in a thread of :class:`SyncHandlerThreads`, and Python
cannot stop a thread: when its request ends first (a limit ended its worker, its idle timeout,
its client left), the handler runs on until it returns, holding its thread. So there are at most
SYNC_HANDLER_THREADS of them per event loop, those whose request has ended included (a thread
pool whose slot is freed when the request ends would start a new thread for every such handler,
without bound); a request that finds them all busy waits for one, and the log says why, once per
episode. They are daemon threads: a handler that never returns does not keep the server from
exiting (AnyIO's worker threads are not: Python waits for them at exit). A handler runs there as in
one of AnyIO's, so ``anyio.from_thread.run(req.body)`` finds the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import os
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

__all__ = [
    "BOOKKEEPING_NICE",
    "SYNC_HANDLER_THREADS",
    "SyncHandlerThreads",
    "give_way_to_event_loop",
    "sync_handler_threads",
]

logger = logging.getLogger("edgeruntime")

T = TypeVar("T")

#: How many nice steps below its process a bookkeeping thread runs (19 is the lowest priority).
BOOKKEEPING_NICE = 10
#: How many sync handlers may run at once on one event loop, each in its thread (as many as
#: Starlette's and AnyIO's default thread pool has).
SYNC_HANDLER_THREADS = 40
#: How long an idle sync-handler thread waits for another handler before it ends.
IDLE_THREAD_SEC = 10.0


def give_way_to_event_loop() -> None:
    """Lower the calling thread's scheduling priority by BOOKKEEPING_NICE (Linux; elsewhere, nothing).

    Called by the thread itself when it starts. Lowering a priority needs no privilege; a
    failure (a sandbox without the system call) leaves the thread as it was.
    """
    if sys.platform != "linux":  # elsewhere the call would set the nice value of the whole process
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + BOOKKEEPING_NICE))
    except OSError:
        pass


_QUEUED, _RUNNING, _RETURNED, _DROPPED = 0, 1, 2, 3


def _as_anyio_worker() -> Callable[[], AbstractContextManager[Any]] | None:
    """What makes the calling thread one of AnyIO's worker threads for the running loop, where
    ``anyio.from_thread`` finds it (None if this AnyIO has no such thing: it then needs a token)."""
    try:
        from anyio._core._eventloop import claim_worker_thread, get_async_backend
    except ImportError:  # pragma: no cover - an AnyIO without them
        return None
    backend = get_async_backend()
    token = backend.current_token()
    return lambda: claim_worker_thread(backend, token)


class _Call(Generic[T]):
    """One sync handler's call: run in a thread unless its request ended before the thread took it."""

    __slots__ = ("abandoned", "anyio", "context", "fn", "function", "lock", "loop", "result", "started", "state")

    def __init__(self, fn: Callable[[], T], function: str, loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.anyio = _as_anyio_worker()
        self.function = function
        self.loop = loop
        self.context = contextvars.copy_context()  # the request's: `Deno.env`, `wait_until` find it there
        self.result: asyncio.Future[T] = loop.create_future()
        self.lock = threading.Lock()
        self.state = _QUEUED
        #: Its request ended while it ran: it holds its thread until it returns.
        self.abandoned = False
        self.started = 0.0


class SyncHandlerThreads:
    """The threads one event loop's sync handlers run in: at most `size` busy at once, counting
    those that run on after their request ended."""

    def __init__(self, size: int | None = None) -> None:
        self.size = SYNC_HANDLER_THREADS if size is None else size
        #: Threads running a handler (on the loop's side: counted when handed one, until it returned).
        self.busy = 0
        #: Of them, those whose request has ended.
        self.abandoned = 0
        self._lock = threading.Lock()
        #: The inboxes of the threads waiting for a handler.
        self._idle: list[queue.SimpleQueue[_Call[Any]]] = []
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._full_reported = False

    async def run(self, fn: Callable[[], T], function: str) -> T:
        """`fn()` in a thread, in the caller's context; its result or exception."""
        while self.busy >= self.size:
            self._report_full(function)
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_next()  # it was this one's turn: the next waiter's now
                raise
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
        self.busy += 1
        call = _Call(fn, function, asyncio.get_running_loop())
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name="edgeruntime-sync-handler", daemon=True).start()
        inbox.put(call)
        try:
            return await asyncio.shield(call.result)
        except asyncio.CancelledError:
            with call.lock:
                running = call.state == _RUNNING
                if call.state == _QUEUED:
                    call.state = _DROPPED
            if running:
                call.abandoned = True
                self.abandoned += 1
                logger.warning(
                    "function %s: its sync handler runs on in its thread after its request ended (a thread "
                    "cannot be stopped); %d of the %d threads for sync handlers are held so",
                    function,
                    self.abandoned,
                    self.size,
                    extra={"function": function},
                )
            # else it has returned, or the thread will not run it: either way its thread is free soon
            raise

    def _report_full(self, function: str) -> None:
        if self._full_reported:
            return
        self._full_reported = True
        logger.warning(
            "all %d threads for sync handlers are busy, %d of them with handlers whose request has ended "
            '(a thread cannot be stopped): requests to sync handlers wait for one (function %s; use an "async def" '
            'handler, or isolation = "process", where a limit ends the whole worker process)',
            self.size,
            self.abandoned,
            function,
            extra={"function": function},
        )

    def _serve(self, inbox: queue.SimpleQueue[_Call[Any]]) -> None:
        while True:
            try:
                call = inbox.get(timeout=IDLE_THREAD_SEC)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        return
                continue  # it was handed a call just now
            with call.lock:
                run = call.state == _QUEUED
                if run:
                    call.state = _RUNNING
            outcome: tuple[bool, Any] = (False, None)
            if run:
                call.started = time.monotonic()
                try:
                    with call.anyio() if call.anyio is not None else contextlib.nullcontext():
                        outcome = (True, call.context.run(call.fn))
                except BaseException as exc:
                    outcome = (False, exc)
                with call.lock:
                    call.state = _RETURNED
            try:
                call.loop.call_soon_threadsafe(self._returned, call, outcome)
            except RuntimeError:  # its loop has closed: so has this thread's use
                return
            del call, outcome
            with self._lock:
                self._idle.append(inbox)

    def _returned(self, call: _Call[Any], outcome: tuple[bool, Any]) -> None:
        self.busy -= 1
        if call.abandoned:
            self.abandoned -= 1
            logger.info(
                "function %s: a sync handler whose request had ended returned after %.1f s",
                call.function,
                time.monotonic() - call.started,
                extra={"function": call.function},
            )
        elif not call.result.done():
            ok, value = outcome
            if ok:
                call.result.set_result(value)
            elif isinstance(value, StopIteration):  # a future cannot hold one
                error = RuntimeError("the sync handler raised StopIteration")
                error.__cause__ = value
                call.result.set_exception(error)
            elif isinstance(value, BaseException):
                call.result.set_exception(value)
            else:  # dropped before it ran: its request has ended
                call.result.cancel()
        self._wake_next()

    def _wake_next(self) -> None:
        if self.busy >= self.size:
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._full_reported = False  # the episode is over: none waits, and a thread is free


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SyncHandlerThreads] = weakref.WeakKeyDictionary()


def sync_handler_threads(loop: asyncio.AbstractEventLoop | None = None) -> SyncHandlerThreads:
    """The sync-handler threads of `loop` (the running loop by default)."""
    loop = loop or asyncio.get_running_loop()
    threads = _per_loop.get(loop)
    if threads is None:
        threads = _per_loop[loop] = SyncHandlerThreads()
    return threads
