"""The entry point of a worker process: ``python -m edgeruntime.workers.process.child <fd> <server pid>``.

The server (:mod:`edgeruntime.workers.process.parent`) starts one such process per worker with the function's
env as its whole environment, and talks to it over the Unix socket `fd`. The process loads the
function as an inline worker does, serves the requests the server forwards, reports its
background work, and exits when the socket closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import pickle
import resource
import signal
import socket
import sys
import traceback
from pathlib import Path
from typing import Any

from edgeruntime.core.background import BackgroundTask
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.events import StopReason
from edgeruntime.core.types import Message
from edgeruntime.exceptions import BootError, FunctionError, LimitExceeded, PayloadTooLarge
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.limits import Limits
from edgeruntime.workers.process.channel import Channel
from edgeruntime.workers.process.frames import (
    BeforeUnload,
    BeforeUnloadDone,
    Body,
    Boot,
    Booted,
    BootFailed,
    Cancel,
    Done,
    Ended,
    Frame,
    Request,
    Sent,
    TaskDone,
    TaskStarted,
)
from edgeruntime.workers.worker import InlineWorker

__all__ = ["WorkerProcess", "flush_logs", "main", "rss_mb"]


def rss_mb() -> float:
    """This process's resident memory in MB."""
    with open("/proc/self/statm", "rb") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / (1024 * 1024)


#: The address-space backstop: this much above the memory limit (see :mod:`edgeruntime.workers.process.parent`).
ADDRESS_SPACE_HEADROOM_MB = 1024
_PR_SET_PDEATHSIG = 1


def die_with(server_pid: int) -> None:
    """Be killed when the server process dies, even if the function never awaits again (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != server_pid:  # the server died before prctl took effect
        os._exit(1)


def limit_address_space(limits: Limits) -> None:
    """A backstop against allocating faster than the server's memory watch can see."""
    limit = int((limits.memory_limit_mb * 4 + ADDRESS_SPACE_HEADROOM_MB) * 1024 * 1024)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard == resource.RLIM_INFINITY or limit < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def flush_logs() -> None:
    """Write out buffered log lines now: the server may kill this process right after."""
    for name in ("edgeruntime", "_edgeruntime_functions"):
        for handler in logging.getLogger(name).handlers:
            with contextlib.suppress(Exception):
                handler.flush()


class RequestBody:
    """The `receive` of one forwarded request: body messages as the server sends them."""

    def __init__(self, first: Message) -> None:
        self.messages: collections.deque[Message] = collections.deque([first])
        self.waiter: asyncio.Future[None] | None = None

    def push(self, message: Message) -> None:
        self.messages.append(message)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> Message:
        while not self.messages:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        return self.messages.popleft()


def _portable(error: BaseException | None) -> BaseException | None:
    """`error` if it survives pickling, else a RuntimeError describing it."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    error.__traceback__ = None
    return error


class WorkerProcess:
    """The worker side of the channel."""

    def __init__(self, stopped: asyncio.Future[None]) -> None:
        self.channel = Channel(self.on_frame, self.on_close)
        self.stopped = stopped
        self.worker: InlineWorker | None = None
        self.requests: dict[int, tuple[asyncio.Task[None], RequestBody]] = {}
        self.tasks: dict[int, BackgroundTask] = {}
        self._keep: set[asyncio.Task[Any]] = set()

    def on_close(self) -> None:
        if not self.stopped.done():
            self.stopped.set_result(None)

    def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Request):  # the request path first
            body = RequestBody(frame.first)
            task = asyncio.get_running_loop().create_task(self.serve(frame, body))
            self.requests[frame.rid] = (task, body)
        elif isinstance(frame, Body):
            entry = self.requests.get(frame.rid)
            if entry is not None:
                entry[1].push(frame.message)
        elif isinstance(frame, Cancel):
            entry = self.requests.get(frame.rid)
            if entry is not None:
                entry[0].cancel()
        elif isinstance(frame, BeforeUnload):
            self._spawn(self.beforeunload(frame.reason))
        elif isinstance(frame, Boot):
            self.boot(frame)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._keep.add(task)
        task.add_done_callback(self._keep.discard)

    def boot(self, frame: Boot) -> None:
        from edgeruntime.core.logs import configure_logging

        configure_logging(frame.log_format)
        limit_address_space(frame.limits)
        baseline = rss_mb()
        spec = FunctionSpec(frame.name, Path(frame.directory))
        worker = InlineWorker(spec, os.environ, frame.limits, policy=frame.policy)
        worker.state.background.start_observers.append(self.task_started)
        worker.state.background.observers.append(self.task_done)
        try:
            worker.boot()
        except FunctionError as exc:
            cause = exc.__cause__
            detail = "".join(traceback.format_exception(cause)) if cause is not None else ""
            self.channel.send(BootFailed("boot" if isinstance(exc, BootError) else "crash", str(exc), detail))
            return
        self.worker = worker
        self.channel.send(Booted(baseline))

    def task_started(self, entry: BackgroundTask) -> None:
        self.tasks[id(entry)] = entry
        self.channel.send(TaskStarted(id(entry), entry.name, entry.execution_id))

    def task_done(self, entry: BackgroundTask) -> None:
        self.tasks.pop(id(entry), None)
        self.channel.send(TaskDone(id(entry), entry.outcome.value, _portable(entry.error), entry.cut_reason))

    async def beforeunload(self, reason: StopReason) -> None:
        if self.worker is not None:
            await self.worker.beforeunload(reason)
        flush_logs()
        self.channel.send(BeforeUnloadDone(reason))

    async def serve(self, request: Request, body: RequestBody) -> None:
        worker = self.worker
        assert worker is not None
        rid = request.rid
        ctx = ExecutionContext(
            function=worker.name, worker=worker.state, execution_id=request.execution_id, trigger=request.trigger
        )
        channel = self.channel

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ctx.response_started = True
            channel.send(Sent(rid, message))
            await channel.drain()  # the server stopped reading: its client is slower than this body

        ended: Ended | None = None
        try:
            await worker.handle(request.scope, body.receive, send, ctx)
        except LimitExceeded as exc:
            ended = Ended("limit", exc.reason)
        except PayloadTooLarge:
            ended = Ended("too_large")
        except asyncio.CancelledError:
            ended = Ended("cancelled")
        except Exception as exc:
            ended = Ended("error", f"{type(exc).__name__}: {exc}")
        finally:
            self.requests.pop(rid, None)
            channel.send(Done(rid, ended))


async def _run(fd: int) -> None:
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()
    process = WorkerProcess(stopped)
    sock = socket.socket(fileno=fd)
    await loop.create_unix_connection(lambda: process.channel, sock=sock)
    try:
        await stopped
    finally:
        flush_logs()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        die_with(int(args[1]))
    with contextlib.suppress(ValueError, OSError):  # a crashing function leaves no core file behind
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    asyncio.run(_run(int(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
