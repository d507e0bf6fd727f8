"""The entry point of a worker process: ``python -m edgeruntime.workers.process.child FD PARENT NAME [UID:GID]``.

A worker process is forked from its function's template (:mod:`edgeruntime.workers.process.template`),
which then calls :func:`main`, or, where there is no template, started by the server
(:mod:`edgeruntime.workers.process.parent`) as this module, in the sandbox its config asks for
(:mod:`edgeruntime.workers.process.sandbox`). It talks to the server over the Unix socket `FD`.
Before it reads a frame the process gives up root for UID:GID when given one, arranges to die with
its parent PARENT (0: bubblewrap does that), makes itself non-dumpable and announces itself (the
server learns its pid from the kernel, see :func:`announce`).
The boot frame then brings the function's env, and the process loads the function as an inline
worker does, serves the requests the server forwards, reports its background work, enqueues jobs
through the server, and exits when the socket closes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import gc
import itertools
import json
import logging
import os
import pickle
import resource
import signal
import socket
import struct
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from edgeruntime.core import context
from edgeruntime.core.background import BackgroundTask
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.descriptors import exhaustion
from edgeruntime.core.events import StopReason
from edgeruntime.core.metering import makes_plain_tasks
from edgeruntime.core.threads import sync_handler_threads
from edgeruntime.core.types import Message
from edgeruntime.exceptions import (
    BootError,
    FunctionError,
    JobsError,
    LimitExceeded,
    PayloadTooLarge,
    ResourceExhausted,
)
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.limits import Limits
from edgeruntime.workers.process.channel import Channel
from edgeruntime.workers.process.frames import (
    ACK_BATCH,
    FROM_SERVER,
    WINDOW,
    Answered,
    BeforeUnload,
    BeforeUnloadDone,
    Body,
    Boot,
    Booted,
    BootExhausted,
    BootFailed,
    Cancel,
    Consumed,
    Delivered,
    Done,
    Ended,
    Enqueue,
    Enqueued,
    Frame,
    Listen,
    Outlived,
    Request,
    Sent,
    TaskDone,
    TaskStarted,
    kind_of,
    load_worker_frame,
    read_frame,
)
from edgeruntime.workers.process.sandbox import set_dumpable, set_parent_death_signal
from edgeruntime.workers.worker import InlineWorker

__all__ = ["WorkerProcess", "announce", "drop_privileges", "enter_sandbox", "flush_logs", "harden", "main", "rss_mb"]


#: The kind number of an Answered frame, whose plain tuple (frames.to_wire) the request path makes itself.
_ANSWERED: int = Answered._field_defaults["kind"]


def rss_mb() -> float:
    """This process's resident memory in MB."""
    with open("/proc/self/statm", "rb") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / (1024 * 1024)


#: The address-space backstop: this much above the memory limit (see :mod:`edgeruntime.workers.process.parent`).
ADDRESS_SPACE_HEADROOM_MB = 1024


def _fail(message: str) -> None:
    sys.stderr.write(f"edgeruntime worker: {message}\n")
    sys.stderr.flush()
    os._exit(1)


def drop_privileges(uid: int, gid: int) -> None:
    """Become `uid`:`gid` with no supplementary groups, for good (the server runs as root)."""
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        _fail(f"cannot switch to uid {uid}: {exc.strerror}")
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        _fail(f"still holding other ids after switching to uid {uid}")
    try:
        os.setuid(0)
    except PermissionError:
        return
    _fail("root could be regained after dropping it")


def harden(parent_pid: int) -> None:
    """Die with the parent, even if the function never awaits again, and become non-dumpable:
    another process of this uid can then neither read this one's memory or environ nor ptrace it.

    Both follow any change of uid (which clears them). Linux only; elsewhere the server says so.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        set_parent_death_signal(signal.SIGKILL)
        set_dumpable(False)
    except OSError as exc:
        _fail(f"cannot protect the worker process (prctl): {exc.strerror}")
    if parent_pid and os.getppid() != parent_pid:  # the server died before prctl took effect
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


def _raises_when_gone(scope: Any) -> bool:
    """Whether the server this request came through raises on a send to a client that left
    (ASGI 2.4: Uvicorn); Hypercorn's sends are dropped instead. Forwarded requests behave alike."""
    try:
        return _at_least_2_4(str(scope["asgi"]["spec_version"]))
    except (KeyError, TypeError):
        return False


@functools.lru_cache(maxsize=8)  # a server says the same version on every request
def _at_least_2_4(spec_version: str) -> bool:
    try:
        version = tuple(int(part) for part in spec_version.split("."))
    except ValueError:
        return False
    return version >= (2, 4)


class RequestBody:
    """One forwarded request in this process: its `receive` (the messages the server forwards:
    body chunks, WebSocket messages, the client's leaving) and the window of what it sends back."""

    __slots__ = (
        "_consumed",
        "_first",
        "channel",
        "client_gone",
        "held",
        "listening",
        "messages",
        "raises_when_gone",
        "rid",
        "room",
        "unsent",
        "waiter",
    )

    def __init__(
        self, rid: int, first: Message, channel: Channel, raises_when_gone: bool = False, listening: bool = False
    ) -> None:
        self.rid = rid
        self.channel = channel
        self.messages: collections.deque[Message] = collections.deque([first])
        #: The server forwards what the client sends next (a body in parts, a WebSocket): else it
        #: is asked to (`Listen`) when the function waits for more than the first message.
        self.listening = listening
        self.waiter: asyncio.Future[None] | None = None
        #: The first message came with the request, outside the window.
        self._first = True
        self._consumed = 0
        #: Sent messages the server has not handed to the client yet (as far as we know).
        self.unsent = 0
        self.room: asyncio.Future[None] | None = None
        self.raises_when_gone = raises_when_gone
        #: The server forwarded the client's leaving.
        self.client_gone = False
        #: The response's start, and its whole body if it came next, held back to travel with the
        #: request's end (one Answered frame) if it ends in this turn of the loop (see `release`).
        self.held: list[Message] | None = None

    def release(self) -> None:
        """Send what is held back on its own: the request goes on past this turn, or sends more."""
        held = self.held
        if held is not None:
            self.held = None
            for message in held:
                self.channel.send(Sent(self.rid, message))

    def push(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.disconnect" or kind == "websocket.disconnect":
            self.client_gone = True
        self.messages.append(message)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def receive(self) -> Message:
        if not self.messages and not self.listening and not self.channel.closed:
            self.listening = True
            self.channel.send(Listen(self.rid))
        while not self.messages:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        message = self.messages.popleft()
        if self._first:
            self._first = False
        else:
            self._consumed += 1
            if self._consumed >= ACK_BATCH:
                self.channel.send(Consumed(self.rid, self._consumed))
                self._consumed = 0
        return message

    def delivered(self, messages: int) -> None:
        self.unsent = max(0, self.unsent - messages)
        if self.room is not None and not self.room.done():
            self.room.set_result(None)

    async def sent(self) -> None:
        """One more message was sent: wait while a window of them has not reached the client."""
        self.unsent += 1
        await self.wait_for_room()

    async def wait_for_room(self) -> None:
        """Wait while a window of the messages sent has not reached the client."""
        while self.unsent >= WINDOW and not self.channel.closed:
            self.room = asyncio.get_running_loop().create_future()
            await self.room


def _portable(error: BaseException | None) -> BaseException | None:
    """`error` if it is a built-in exception that survives pickling, else a RuntimeError
    describing it: the server loads no other class from a worker (see :mod:`edgeruntime.workers.process.frames`)."""
    if error is None:
        return None
    if type(error).__module__ == "builtins":
        try:
            load_worker_frame(pickle.dumps(error, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:
            pass
        else:
            error.__traceback__ = None
            return error
    return RuntimeError(f"{type(error).__name__}: {error}")


class ServerQueue:
    """`edgeruntime.jobs.enqueue` in a worker process: the server enqueues the job (it holds the
    store; the worker does not) and answers with its id."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.waiting: dict[int, asyncio.Future[int]] = {}
        self._ids = itertools.count(1)

    async def enqueue(
        self,
        function: str,
        payload: Any = None,
        *,
        delay: float = 0,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        try:
            body = json.dumps({} if payload is None else payload, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise JobsError(f"enqueue({function!r}): payload is not JSON-serialisable: {exc}") from None
        try:  # plain values: the server loads nothing else from a worker
            qid = next(self._ids)
            frame = Enqueue(
                qid,
                str(function),
                body,
                float(delay),
                None if max_attempts is None else int(max_attempts),
                None if idempotency_key is None else str(idempotency_key),
            )
        except (TypeError, ValueError) as exc:
            raise JobsError(f"enqueue({function!r}): {exc}") from None
        if self.channel.closed:
            raise JobsError("enqueue: the server closed this worker's channel")
        answer = self.waiting[qid] = asyncio.get_running_loop().create_future()
        self.channel.send(frame)
        try:
            job_id: int = await answer
        finally:
            self.waiting.pop(qid, None)
        return job_id

    def answered(self, frame: Enqueued) -> None:
        answer = self.waiting.get(frame.qid)
        if answer is None or answer.done():
            return
        if frame.error is not None or frame.job_id is None:
            answer.set_exception(JobsError(frame.error or "enqueue failed"))
        else:
            answer.set_result(frame.job_id)

    def close(self) -> None:
        for answer in self.waiting.values():
            if not answer.done():
                answer.set_exception(JobsError("enqueue: the server closed this worker's channel"))


class WorkerProcess:
    """The worker side of the channel."""

    def __init__(self, stopped: asyncio.Future[None]) -> None:
        self.channel = Channel(
            self.on_frame,
            self.on_close,
            name="channel to the server",
            on_unsent=self.unsent,
            before_flush=self.release_held,
        )
        #: The requests holding messages back in this turn of the loop.
        self.holding: list[RequestBody] = []
        self.queue = ServerQueue(self.channel)
        self.stopped = stopped
        self.worker: InlineWorker | None = None
        self.requests: dict[int, tuple[asyncio.Task[None], RequestBody]] = {}
        self.tasks: dict[int, BackgroundTask] = {}
        self._keep: set[asyncio.Task[Any]] = set()
        #: The loop this process serves on (`stopped`'s: looking up the running loop is a system
        #: call on Python 3.11).
        self.loop = stopped.get_loop()
        #: The server was told that a sync handler outlived its request (see `check_outlived`).
        self.outlived = False

    def on_close(self) -> None:
        self.queue.close()
        for _, body in self.requests.values():
            body.delivered(WINDOW)  # nothing will be acknowledged any more: no send waits for it
        if not self.stopped.done():
            self.stopped.set_result(None)

    def on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Request):  # the request path first
            self.start(frame)
        elif isinstance(frame, Body):
            entry = self.requests.get(frame.rid)
            if entry is not None:
                entry[1].push(frame.message)
        elif isinstance(frame, Delivered):
            entry = self.requests.get(frame.rid)
            if entry is not None:
                entry[1].delivered(frame.messages)
        elif isinstance(frame, Cancel):
            entry = self.requests.get(frame.rid)
            if entry is not None:
                task = entry[0]
                task.cancel()
                # A task cancelled before its first step never runs `serve`, whose `finally` forgets
                # the request (its Cancel came in the same read as its Request): forget it here.
                task.add_done_callback(functools.partial(self._forget, frame.rid))
        elif isinstance(frame, BeforeUnload):
            self._spawn(self.beforeunload(frame.reason))
        elif isinstance(frame, Enqueued):
            self.queue.answered(frame)
        elif isinstance(frame, Boot):
            self.boot(frame)

    def start(self, request: Request) -> None:
        """Serve `request` in a task of its own."""
        worker = self.worker
        if worker is None:  # the server sends none before the function booted
            self.channel.send(Done(request.rid, Ended("error", "the function has not booted"), None))
            return
        loop = self.loop
        scope = request.scope
        body = RequestBody(
            request.rid,
            request.first,
            self.channel,
            _raises_when_gone(scope),
            # (as the server decides whether it forwards the rest at once: see its `handle`)
            listening=bool(request.first.get("more_body")) or scope.get("type") == "websocket",
        )
        ctx = ExecutionContext(
            function=worker.name, worker=worker.state, execution_id=request.execution_id, trigger=request.trigger
        )
        coro = self.serve(request, body, worker, ctx)
        if makes_plain_tasks(loop):  # (nothing here is metered)
            task: asyncio.Task[None] = asyncio.Task(coro, loop=loop)
        else:
            task = loop.create_task(coro)
        # The worker finds the request's task here, not with `asyncio.current_task()` (a system
        # call on Python 3.11).
        ctx.task = task
        self.requests[request.rid] = (task, body)

    def check_outlived(self) -> None:
        """A request ended before its handler did: if a sync handler runs on in its thread (which
        cannot be stopped), the server is told, once, and retires this worker process, whose end
        stops the thread."""
        if not self.outlived and sync_handler_threads(self.loop).abandoned:
            self.outlived = True
            self.channel.send(Outlived())

    def _forget(self, rid: int, task: asyncio.Task[None]) -> None:
        entry = self.requests.get(rid)
        if entry is not None and entry[0] is task:
            del self.requests[rid]

    def release_held(self) -> None:
        """The end of the turn: what requests still hold back goes now."""
        holding, self.holding = self.holding, []
        for body in holding:
            body.release()

    def unsent(self, fields: tuple[Any, ...], error: Exception) -> Frame | None:
        """A message the function sent could not be pickled: its request fails (500), as an
        exception the handler raised would fail it. The server reads the Done sent in its place
        before what the function sent after it, and drops the rest of the request."""
        if kind_of(fields) not in (Sent, Answered):
            return None
        rid = fields[0]
        entry = self.requests.pop(rid, None)
        if entry is not None:
            entry[0].cancel()
        return Done(rid, Ended("error", f"{type(error).__name__}: {error}"))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._keep.add(task)
        task.add_done_callback(self._keep.discard)

    def boot(self, frame: Boot) -> None:
        from edgeruntime.core.logs import configure_logging

        # The function's env, on top of what the process started with (what Python needs to run).
        os.environ.update(frame.env)
        time.tzset()
        context.server_enqueue = self.queue.enqueue
        # JSON records whatever the server's format: the server reads this process's stderr and
        # logs each record as this function's (see forking.ProcessOutput), in its own format.
        # Whole lines: the workers forked from one template share their stderr.
        configure_logging("json", shared=True)
        spec = FunctionSpec(frame.name, Path(frame.directory))
        if not os.access(spec.entrypoint, os.R_OK):
            message = (
                f"function {frame.name}: its worker process (uid {os.getuid()}) cannot read {spec.entrypoint}: "
                "make the functions directory readable by other users (chmod -R o+rX)"
            )
            self.channel.send(BootFailed("boot", message, ""))
            return
        limit_address_space(frame.limits)
        try:
            baseline = rss_mb()
            worker = InlineWorker(spec, os.environ, frame.limits, policy=frame.policy)
            worker.state.background.start_observers.append(self.task_started)
            worker.state.background.observers.append(self.task_done)
            worker.boot()
        except (ResourceExhausted, OSError) as exc:
            error = exhaustion(exc)
            if error is None:
                raise
            action = exc.action if isinstance(exc, ResourceExhausted) else f"loading function {frame.name}"
            self.channel.send(BootExhausted(action, error.errno or 0))  # EMFILE or ENFILE: `exhaustion` checked
            return
        except FunctionError as exc:
            cause = exc.__cause__
            detail = "".join(traceback.format_exception(cause)) if cause is not None else ""
            self.channel.send(BootFailed("boot" if isinstance(exc, BootError) else "crash", str(exc), detail))
            return
        self.worker = worker
        self.channel.send(Booted(baseline))

    def task_started(self, entry: BackgroundTask) -> None:
        self.tasks[id(entry)] = entry
        self.channel.send(TaskStarted(id(entry), str(entry.name), str(entry.execution_id)))

    def task_done(self, entry: BackgroundTask) -> None:
        self.tasks.pop(id(entry), None)
        self.channel.send(TaskDone(id(entry), entry.outcome.value, _portable(entry.error), entry.cut_reason))

    async def beforeunload(self, reason: StopReason) -> None:
        if self.worker is not None:
            await self.worker.beforeunload(reason)
        flush_logs()
        self.channel.send(BeforeUnloadDone(reason))

    async def serve(self, request: Request, body: RequestBody, worker: InlineWorker, ctx: ExecutionContext) -> None:
        rid = request.rid
        channel = self.channel

        async def send(message: Message) -> None:
            if body.client_gone and body.raises_when_gone:  # as the server would: the client left
                if ctx.response_started:
                    ctx.client_left = True
                else:
                    ctx.client_disconnected = True
                raise OSError("the client disconnected")
            kind = message["type"]
            # A copy: it is pickled at the end of this turn, and the function may reuse its dict until then.
            message = dict(message)
            body.unsent += 1
            if kind == "http.response.start" or kind == "websocket.http.response.start":
                ctx.response_started = True
                if type(message.get("status")) is not int:  # an IntEnum (HTTPStatus): the server loads plain data only
                    message["status"] = int(message["status"])
                if kind == "http.response.start" and body.held is None and not channel.closed:
                    body.held = [message]  # it may travel with the whole body and the request's end
                    self.holding.append(body)
                    channel.hold()
                    return
            elif kind == "websocket.accept":
                ctx.response_started = True
            elif kind == "http.response.body":
                if type(message.get("body")) is memoryview:  # a server writes one as it is; pickle cannot
                    message["body"] = bytes(message["body"])
                held = body.held
                if held is not None and len(held) == 1 and not message.get("more_body"):
                    held.append(message)  # the whole response
                    return
            body.release()
            channel.send(Sent(rid, message))
            if body.unsent >= WINDOW:  # a window of messages not yet at the client: it is slower than this function
                await body.wait_for_room()
            if channel.writing_paused:  # the server stopped reading altogether
                await channel.drain()

        ended: Ended | None = None
        try:
            await worker.handle(request.scope, body.receive, send, ctx)
        except LimitExceeded as exc:
            ended = Ended("limit", str(exc.reason))
            self.check_outlived()
        except PayloadTooLarge:
            ended = Ended("too_large")
        except asyncio.CancelledError:
            ended = Ended("cancelled")
            self.check_outlived()
        except Exception as exc:
            ended = Ended("error", f"{type(exc).__name__}: {exc}")
        finally:
            ctx.task = None  # background work may keep the context: not the finished task with it
            self.requests.pop(rid, None)
            # ctx.error: the handler raised and got its 500 (or 502); the run records why.
            held = body.held
            if ended is None and held is not None and len(held) == 2:  # a small response, made in one turn
                body.held = None
                channel.queue((rid, held, ctx.error, _ANSWERED))  # an Answered frame's plain tuple (frames.to_wire)
            else:
                body.release()
                channel.send(Done(rid, ended, ctx.error))


#: The worker process's collector thresholds: young collections once this many more objects are
#: alive than at the last one. Python's 700 set one off twice for a batch of 64 requests in flight,
#: each walking all of their objects (3 % of a `GET hello` in the worker); a batch of requests now
#: ends, freeing them, before that count is reached. Reference cycles wait that much longer (a few MB
#: at most). A function may set its own (`gc.set_threshold` at its top level).
GC_THRESHOLDS = (5000, 10, 10)


async def _run(fd: int, first: bytes) -> None:
    gc.set_threshold(*GC_THRESHOLDS)
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()
    process = WorkerProcess(stopped)
    sock = socket.socket(fileno=fd)
    await loop.create_unix_connection(lambda: process.channel, sock=sock)
    process.channel.data_received(first)
    try:
        await stopped
    finally:
        flush_logs()


def enter_sandbox(parent_pid: int, ids: str | None) -> None:
    """What a process started by the server does before anything else: become UID:GID (`ids`) when
    given one, die with `parent_pid`, become non-dumpable, and leave no core file behind."""
    if ids is not None:
        uid, _, gid = ids.partition(":")
        drop_privileges(int(uid), int(gid))
        os.umask(0o077)  # without bwrap /tmp is shared: what the function writes there stays its own
    harden(parent_pid)
    with contextlib.suppress(ValueError, OSError):  # a crashing function leaves no core file behind
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))


def announce(fd: int) -> None:
    """Send one byte on the channel with this process's credentials: the kernel gives the server
    this process's pid as the server sees it (under bubblewrap not the one this process sees)."""
    if not hasattr(socket, "SCM_CREDENTIALS"):  # not Linux: the server watches the process it started
        return
    sock = socket.socket(fileno=fd)
    try:
        ids = struct.pack("3i", os.getpid(), os.getuid(), os.getgid())
        sock.sendmsg([b"\0"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, ids)])
    finally:
        sock.detach()


def _receive(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def first_batch(fd: int) -> bytes | None:
    """The server's first batch on the channel `fd`, its Boot frame (waiting in the socket since
    before this process existed), read before the event loop starts: it says which loop to run.
    None if the server closed the channel first."""
    sock = socket.socket(fileno=fd)
    try:
        sock.setblocking(True)
        header = _receive(sock, 4)
        data = None if header is None else _receive(sock, int.from_bytes(header, "big"))
    finally:
        sock.detach()
    return None if header is None or data is None else header + data


def event_loop_runner(first: bytes) -> Callable[[Coroutine[Any, Any, None]], None]:
    """``uvloop.run`` if the Boot frame in `first` asks for uvloop and it is installed, else ``asyncio.run``."""
    try:
        boot = read_frame(FROM_SERVER.load(memoryview(first)[4:])[0])
    except Exception:  # the channel reads it again, and says what is wrong with it
        return asyncio.run
    if isinstance(boot, Boot) and boot.event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            return asyncio.run
        return uvloop.run
    return asyncio.run


def main(argv: list[str] | None = None) -> int:
    """``FD PARENT NAME [UID:GID]``: NAME (the function's) is there for ``ps``.

    A worker forked from a template (:mod:`edgeruntime.workers.process.template`) comes here too,
    without UID:GID: the template already runs as the function's uid.
    """
    args = sys.argv[1:] if argv is None else argv
    enter_sandbox(int(args[1]) if len(args) > 1 else 0, args[3] if len(args) > 3 else None)
    fd = int(args[0])
    announce(fd)
    first = first_batch(fd)
    if first is None:  # the server closed the channel before it sent the Boot frame
        return 0
    event_loop_runner(first)(_run(fd, first))
    return 0


if __name__ == "__main__":
    sys.exit(main())
