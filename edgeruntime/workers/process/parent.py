"""Process isolation: each worker its own OS process, booted, routed to and supervised from here.

The server forwards ASGI messages to the worker process over a Unix socket
(:mod:`edgeruntime.workers.process.channel`) and watches the process from outside: its CPU time and resident
memory are read from ``/proc`` every few milliseconds and reported to the worker's lifecycle,
which retires it or ends it. Ending a worker process is ``SIGKILL``, so a hard limit stops even
``while True: pass``. A process that dies on its own (``os._exit``, a segfault) fails its
in-flight requests with 500 WORKER_ERROR, and the next request boots a fresh worker: its exit is
watched (:meth:`WorkerProcessHandle.watch`), so a process it started that still holds its channel
does not hold that up, and what it left running in its process group is killed. A worker process
in which a sync handler runs on after its request ended (a thread cannot be stopped) says so
(:class:`~edgeruntime.workers.process.frames.Outlived`) and retires.

Memory is resident memory (RSS) above the process's baseline just before the function's module
is loaded, so the limit counts what the function allocates, as the edge runtime counts its
isolate's heap. RSS is read from the parent rather than enforced with ``RLIMIT_AS`` because
address-space limits fail arbitrary allocations (thread stacks, malloc arenas) long before the
resident memory reaches the limit. ``RLIMIT_AS`` is still set (by the worker process, see
:mod:`edgeruntime.workers.process.child`), far above the limit, as a backstop.

Requests are forwarded as they stream: a WebSocket's frames both ways, a streamed request body,
a streamed response (server-sent events) as the function sends it, each request's messages under
a window (:data:`edgeruntime.workers.process.frames.WINDOW`) so that a slow client or a function
that does not read holds the other end back instead of filling the server's memory. A client that
leaves is told to the function (``http.disconnect``, ``websocket.disconnect``), which cancels a
streamed response as it would inline.

The process is started in the server's sandbox (:mod:`edgeruntime.workers.process.sandbox`):
under bubblewrap the process the server starts is ``bwrap`` and the worker its grandchild, whose
pid is the one watched. Function code can write anything to the channel, so what the server reads
from it is plain data only (:data:`edgeruntime.workers.process.frames.FROM_WORKER`), and
a job a function enqueues is enqueued by the server (the worker holds no store credentials).
A frame may name only an execution forwarded to that worker process (:meth:`ProcessWorker.gave`):
one that names another (a background task in another function's run) ends it as a crash. Its
stdout and stderr are pipes the server reads and logs as the function's
(:class:`~edgeruntime.workers.process.forking.ProcessOutput`): its template's, or its own.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgeruntime.core.background import BackgroundTask, TaskOutcome
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.descriptors import exhaustion
from edgeruntime.core.events import StopReason
from edgeruntime.core.metering import CpuMeter
from edgeruntime.core.types import Enqueue as EnqueueJob, Message, Receive, Scope, Send
from edgeruntime.core.worker_state import WorkerState
from edgeruntime.exceptions import (
    BootError,
    ConfigError,
    JobsError,
    PayloadTooLarge,
    ResourceExhausted,
    WorkerCrashed,
)
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.limits import Limits, Policy
from edgeruntime.workers.lifecycle import WorkerLifecycle
from edgeruntime.workers.process.channel import Channel, framed
from edgeruntime.workers.process.forking import ProcessOutput, SpawnedProcess, WorkerProcessHandle, peer_pid
from edgeruntime.workers.process.frames import (
    ACK_BATCH,
    FROM_WORKER,
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
)
from edgeruntime.workers.process.sandbox import Sandbox, WorkerLauncher
from edgeruntime.workers.request_limits import declares_no_body
from edgeruntime.workers.worker import (
    BOOT_TIMEOUT_SEC as BOOT_TIMEOUT_SEC,  # (the one limit for both isolations)
    WorkerStatus,
    describe_error,
    limit_exceeded,
)

__all__ = ["ProcessWorker"]

logger = logging.getLogger("edgeruntime")

#: How often the server reads a worker process's CPU time and memory.
MONITOR_INTERVAL_SEC = 0.02
#: Bodies up to this size are read whole and forwarded in the request's frame (one write, one wake-up).
COALESCE_BODY_BYTES = 1024 * 1024
#: Frames of one response waiting for its client before the server stops reading from the worker:
#: only a worker that ignores the window (frames.WINDOW) gets there.
PAUSE_FRAMES = 64
#: How long a worker process whose channel closed may take to exit before it is killed.
REAP_TIMEOUT_SEC = 5.0
#: How long ending a worker waits for `beforeunload` listeners dispatched just before.
BEFOREUNLOAD_GRACE_SEC = 0.5
#: A frame from a worker may be this much longer than its memory limit (a body chunk it held).
FRAME_SLACK_MB = 64
#: How many of the executions last forwarded to a worker process it may name (a background task
#: it reports, a log line) once they are over: an execution whose request is in flight, or whose
#: background work is pending, may always be named; one that is over, until this many more were
#: forwarded (code may keep its context and start work in it later).
GIVEN_EXECUTIONS = 4096
_TICKS_PER_SEC = os.sysconf("SC_CLK_TCK")
_PAGE_MB = resource.getpagesize() / (1024 * 1024)
#: Whether this system has /proc (Linux): where it has, a worker's entry missing there means it has exited.
_HAS_PROC = os.path.exists("/proc/self/stat")
#: The kind number of a Request frame, whose plain tuple (frames.to_wire) the request path makes itself.
_REQUEST: int = Request._field_defaults["kind"]
#: The scope keys a function can use; the rest (server internals) stay in the server (see `_slim`).
_SCOPE_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "path",
    "raw_path",
    "query_string",
    "root_path",
    "headers",
    "client",
    "server",
)


class _Call:
    """One request in flight in the worker process: the messages that came back for it, and its window."""

    __slots__ = ("client_gone", "delivered", "events", "loop", "pump", "room", "unacked", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        #: The server's loop (passed in: `asyncio.get_running_loop()` is a system call on Python 3.11).
        self.loop = loop
        self.events: collections.deque[Sent | Done | Answered] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        #: Body messages sent to the worker that the function has not read yet (as far as we know).
        self.unacked = 0
        self.room: asyncio.Future[None] | None = None
        #: Sent messages handed to the client since the last Delivered frame.
        self.delivered = 0
        #: The client left: what the function sends next goes nowhere.
        self.client_gone = False
        #: The task forwarding what the client sends after the first message (see `ProcessWorker._pump`).
        self.pump: asyncio.Task[None] | None = None

    def consumed(self, messages: int) -> None:
        self.unacked = max(0, self.unacked - messages)
        if self.room is not None and not self.room.done():
            self.room.set_result(None)

    async def wait_for_room(self) -> None:
        """Wait while the function has a window of this request's messages unread."""
        while self.unacked >= WINDOW:
            self.room = self.loop.create_future()
            await self.room

    def push(self, event: Sent | Done | Answered) -> None:
        self.events.append(event)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def _proc_usage(pid: int) -> tuple[float, float]:
    """CPU time (ms) and resident memory (MB) of process `pid`."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    cpu_ms = (int(fields[11]) + int(fields[12])) * 1000 / _TICKS_PER_SEC
    with open(f"/proc/{pid}/statm", "rb") as f:
        rss_mb = int(f.read().split()[1]) * _PAGE_MB
    return cpu_ms, rss_mb


def _event_loop(loop: asyncio.AbstractEventLoop) -> str:
    """The event loop a worker process runs: the server's kind (uvloop under Uvicorn), so that a
    function runs on the loop it would run on inline."""
    uvloop = sys.modules.get("uvloop")
    return "uvloop" if uvloop is not None and isinstance(loop, uvloop.Loop) else "asyncio"


def _small_body(scope: Scope) -> bool:
    """True if the request declares a body small enough to forward in one frame (or none at all)."""
    length: int | None = None
    for key, value in scope["headers"]:
        name = key.lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return False
        elif name == b"transfer-encoding":
            return False
    return length is None or length <= COALESCE_BODY_BYTES


def _slim(scope: Scope) -> dict[str, Any]:
    """What of `scope` goes to the worker process: the keys a function can use (_SCOPE_KEYS), its
    headers a list of their own (the frame is pickled at the end of the turn)."""
    try:  # an HTTP request from a server that sets every key (Uvicorn, Hypercorn): one dict display
        return {
            "type": scope["type"],
            "asgi": scope["asgi"],
            "http_version": scope["http_version"],
            "method": scope["method"],
            "scheme": scope["scheme"],
            "path": scope["path"],
            "raw_path": scope["raw_path"],
            "query_string": scope["query_string"],
            "root_path": scope["root_path"],
            "headers": list(scope["headers"]),
            "client": scope["client"],
            "server": scope["server"],
        }
    except KeyError:
        slim = {key: scope[key] for key in _SCOPE_KEYS if key in scope}
        slim["headers"] = list(scope["headers"])
        return slim


def _body_size(message: Message) -> int:
    """The bytes of body or WebSocket data `message` carries (see frames.payload_bytes)."""
    data = message.get("body") or message.get("bytes") or message.get("text")
    return len(data) if isinstance(data, bytes | bytearray | str) else 0


async def _read_whole_body(first: Message, receive: Receive) -> Message:
    chunks = [first.get("body", b"")]
    message = first
    while message.get("more_body"):
        message = await receive()
        if message["type"] != "http.request":
            return message
        chunks.append(message.get("body", b""))
    return {"type": "http.request", "body": b"".join(chunks), "more_body": False}


class ProcessWorker:
    """A function module loaded in its own OS process."""

    kind = "process"
    #: A worker process takes a few ms to boot (forked from its template; ~0.1 s without one): the
    #: successor is booted before this one retires.
    prepares_successor = True

    def __init__(
        self,
        spec: FunctionSpec,
        env: Mapping[str, str],
        limits: Limits,
        observers: list[Callable[[BackgroundTask], None]] | None = None,
        policy: Policy = "per_worker",
        log_format: str = "text",
        launcher: WorkerLauncher | None = None,
        *,
        enqueue: EnqueueJob | None = None,
    ) -> None:
        self.spec = spec
        #: The function's env (`Deno.env` in the worker), sent in the boot frame.
        self.env = dict(env)
        self.limits = limits
        self.policy = policy
        self.log_format = log_format
        self.launcher = launcher or WorkerLauncher(Sandbox("none"), spec.directory.parent)
        #: Enqueues the jobs the function enqueues (the server's jobs system); None: there is none.
        self.enqueue = enqueue
        #: The server-side view of the worker: its background work, as the process reports it.
        self.state = WorkerState(spec.name, self.env, observers)
        self.state.background.log_failures = False  # the worker process logged them, with traceback
        self.status = WorkerStatus.ACTIVE
        self.in_flight = 0
        self.meter = CpuMeter(spec.name)
        #: The module lives in the worker process, not here.
        self.module: types.ModuleType | None = None
        self.memory_mb = 0.0
        self.end_reason: StopReason | None = None
        self.exit_status: int | None = None
        #: The worker process, forked from its function's template or spawned (see `forking`).
        self.proc: WorkerProcessHandle | None = None
        self.channel: Channel | None = None
        self._calls: dict[int, _Call] = {}
        #: The requests in flight whose client is not listened to yet: `receive` and whether their
        #: first message went without asking the server (see `_pump`), until the function asks.
        self._listeners: dict[int, tuple[Receive, bool]] = {}
        self._ids = itertools.count(1)
        self._tasks: dict[int, BackgroundTask] = {}
        #: The ids of the executions last forwarded to the worker process, oldest first (see `gave`).
        self._given: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: The executions whose request is in flight or whose background work is pending here: how
        #: many of each (requests and tasks); never forgotten while they last, however many come after.
        self._live: dict[str, int] = {}
        #: The worker process's answer to Boot; None if it exited first.
        self._booted: asyncio.Future[Booted | BootFailed | BootExhausted | None] | None = None
        self._unloaded: dict[StopReason, asyncio.Future[None]] = {}
        self._lifecycle: WorkerLifecycle | None = None
        self._paused_by: _Call | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._cpu_baseline_ms = 0.0
        self._memory_baseline_mb = 0.0
        self._pid: int | None = None
        self._enqueues: set[asyncio.Task[None]] = set()
        self._reaping: asyncio.Task[None] | None = None
        #: Booting: a process that exits now is reported by the boot (`start` raises), not as a crash.
        self._starting = False

    @property
    def id(self) -> str:
        return self.state.worker_id

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        """The worker process's pid as the server sees it (spawned under bwrap not `proc.pid`: bubblewrap's)."""
        if self._pid is not None:
            return self._pid
        return self.proc.pid if self.proc is not None else None

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and not self.state.background.pending

    def gave(self, execution_id: str) -> bool:
        """Whether execution `execution_id` was forwarded to this worker process and is still
        running here (its request or background work) or is one of the last GIVEN_EXECUTIONS: the
        only ones it may name. Another function's execution id is easy to learn (the dashboard API
        on loopback needs no key); a worker must not add to its run."""
        return execution_id in self._live or execution_id in self._given

    def _hold(self, execution_id: str) -> None:
        live = self._live
        live[execution_id] = live.get(execution_id, 0) + 1

    def _release(self, execution_id: str) -> None:
        live = self._live
        left = live.get(execution_id, 0) - 1
        if left > 0:
            live[execution_id] = left
        else:
            live.pop(execution_id, None)

    # -- boot ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the process and load the function in it; raises BootError, WorkerCrashed or ResourceExhausted."""
        self._starting = True
        try:
            await self._boot()
        except asyncio.CancelledError:  # the server stops: a worker process half booted is not left behind
            await self._abort_boot()
            raise
        finally:
            self._starting = False

    async def _boot(self) -> None:
        loop = asyncio.get_running_loop()
        self.state.loop = loop
        directory = self.spec.directory.resolve()
        started = time.perf_counter()
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            if exhaustion(exc) is None:
                raise
            raise ResourceExhausted(self.name, f"starting a worker process for {self.name}") from exc
        announces = hasattr(socket, "SO_PASSCRED")
        boot = framed(
            Boot(self.name, str(directory), self.limits, self.policy, self.log_format, self.env, _event_loop(loop))
        )
        try:
            if announces:  # before the worker can write: its announcement then carries its credentials
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            # The boot frame waits in the socket for the worker (only it will hold the other end): it
            # boots as soon as it has announced itself, without waiting for the server to answer.
            ours.setblocking(False)
            try:
                sent = ours.send(boot)
            except BlockingIOError:
                sent = 0
            self.proc = await self._start_process(directory, theirs)
        except BaseException:
            ours.close()  # a failed start must not hold a descriptor
            raise
        finally:
            theirs.close()
        # From its start to its Booted frame: a worker process whose function's top level does not
        # finish (a sleep, an endless loop at import) is killed, and its boot fails (503).
        deadline = loop.time() + BOOT_TIMEOUT_SEC
        try:
            pid = await asyncio.wait_for(peer_pid(ours), BOOT_TIMEOUT_SEC) if announces else self.proc.pid
        except BaseException as exc:
            ours.close()
            if not isinstance(exc, TimeoutError):
                raise
            raise await self._too_slow() from None
        if pid is None:  # it exited before it could say who it is
            ours.close()
            raise await self._exited("while booting")
        self._pid = pid
        self.proc.announced(pid)
        channel = self.channel = Channel(
            self._on_frame,
            self._on_close,
            reader=FROM_WORKER,
            max_frame_bytes=int((self.limits.memory_limit_mb + FRAME_SLACK_MB) * 1024 * 1024),
            name=f"worker channel of {self.name}",
            on_unsent=self._unsent,
            late=True,  # after this turn's responses to the clients (see Channel)
        )
        # Made first: uvloop hands the protocol what already waits in the socket (a worker that
        # booted while this process was not running) before create_unix_connection returns.
        self._booted = loop.create_future()
        transport, _ = await loop.create_unix_connection(lambda: channel, sock=ours)
        self.proc.watch(self._process_exited)
        if sent < len(boot):  # an env larger than the socket's buffer: the rest once it is read
            transport.write(boot[sent:])
        try:
            answer = await asyncio.wait_for(asyncio.shield(self._booted), max(0.0, deadline - loop.time()))
        except TimeoutError:
            raise await self._too_slow() from None
        if isinstance(answer, BootFailed):
            await self._abort_boot()
            if answer.detail:
                logger.error("%s", answer.detail.rstrip(), extra={"function": self.name})
            raise (BootError if answer.reason == "boot" else WorkerCrashed)(self.name, answer.message)
        if isinstance(answer, BootExhausted):  # the worker process ran out of file descriptors
            await self._abort_boot()
            raise ResourceExhausted(self.name, answer.action) from OSError(answer.errno, os.strerror(answer.errno))
        if answer is None:
            raise await self._exited("while booting")
        if self.status is WorkerStatus.ENDED:  # its channel closed after its Booted frame
            raise await self._exited("right after booting")
        self._memory_baseline_mb = answer.baseline_mb
        try:
            self._cpu_baseline_ms, _ = _proc_usage(pid)
        except OSError as exc:
            if exhaustion(exc) is not None:  # its limits could not be watched: boot again later
                await self._abort_boot()
                raise ResourceExhausted(self.name, f"watching the worker process of {self.name}") from exc
            if _HAS_PROC:
                raise await self._exited("right after booting") from None
            # No /proc (not Linux): the process is isolated, its CPU and memory not watched.
            logger.warning(
                "process isolation cannot read /proc on this system: CPU and memory limits are not enforced",
                extra={"function": self.name},
            )
            return
        if self.proc.exited():  # what was read may be the process's that took its pid
            raise await self._exited("right after booting")
        logger.info(
            "booted function %s in %.1f ms (worker %s, process %d)",
            self.name,
            (time.perf_counter() - started) * 1000,
            self.id[:8],
            self._pid,
            extra={"function": self.name},
        )
        self._monitor = loop.create_task(self._watch_usage())

    async def _start_process(self, directory: Path, theirs: socket.socket) -> WorkerProcessHandle:
        """Fork the worker process from the function's template or, without one, start it, talking
        on `theirs`. Raises BootError, WorkerCrashed or ResourceExhausted."""
        template = self.launcher.template(self.name)
        if template is not None:
            forked = await template.fork(theirs, directory, self.limits.memory_limit_mb)
            if forked is not None:
                if forked.output is not None:
                    forked.output.add_worker(self)
                return forked
        output: ProcessOutput | None = None
        try:
            output = ProcessOutput(self.name)
            argv, cwd = self.launcher.command(
                self.name, directory, theirs.fileno(), os.getpid(), self.limits.memory_limit_mb
            )
            # Popen only forks and execs: it does not wait for the child.
            proc = subprocess.Popen(  # noqa: ASYNC220
                argv,
                pass_fds=(theirs.fileno(),),
                env=self.launcher.environ(self.env, os.environ),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                # Pipes the server reads: what it writes around `print` is logged as its own.
                stdout=output.stdout,
                stderr=output.stderr,
                # Its own session: a terminal's Ctrl-C (SIGINT to the foreground process group) goes
                # to the server alone, which then ends its workers in order.
                start_new_session=True,
            )
        except ConfigError as exc:  # no uid left for it
            if output is not None:
                output.close()
            raise BootError(self.name, f"function {self.name}: {exc}") from None
        except OSError as exc:
            if output is not None:
                output.close()
            if exhaustion(exc) is not None:
                raise ResourceExhausted(self.name, f"starting a worker process for {self.name}") from exc
            # out of processes, the sandbox's binary gone
            raise BootError(self.name, f"function {self.name}: cannot start its worker process: {exc}") from None
        output.started()
        output.add_worker(self)
        return SpawnedProcess(proc, output)

    async def _abort_boot(self) -> None:
        self.status = WorkerStatus.ENDED
        self.end_reason = StopReason.BOOT_FAILURE
        self._kill()
        await self._reap()

    async def _too_slow(self) -> BootError:
        """The worker process did not boot in time: killed, and the error its boot raises."""
        await self._abort_boot()
        return BootError(self.name, f"function {self.name}: worker did not boot within {BOOT_TIMEOUT_SEC:g} s")

    async def _exited(self, when: str) -> WorkerCrashed:
        """The worker process exited before it served: the error its boot raises, with its exit status."""
        await self._abort_boot()
        return WorkerCrashed(
            self.name, f"function {self.name}: worker process exited {when} (exit status {self.exit_status})"
        )

    def watch(self, lifecycle: WorkerLifecycle) -> None:
        self._lifecycle = lifecycle

    async def _watch_usage(self) -> None:
        pid, proc = self.pid, self.proc
        assert pid is not None and proc is not None
        while self.status is not WorkerStatus.ENDED:
            try:
                cpu_ms, rss_mb = _proc_usage(pid)
            except OSError as exc:
                if exhaustion(exc) is None:  # the process is gone
                    return
                # Out of descriptors for a moment: the limits are checked again once some are free.
                await asyncio.sleep(MONITOR_INTERVAL_SEC)
                continue
            except (ValueError, IndexError):
                return
            if proc.exited():  # its pid may be another process's by now: what was read is not its own
                return
            self.meter.used_ms = max(0.0, cpu_ms - self._cpu_baseline_ms)
            self.memory_mb = max(0.0, rss_mb - self._memory_baseline_mb)
            lifecycle = self._lifecycle
            if lifecycle is not None:
                lifecycle.observe_memory(self.memory_mb)
                lifecycle.observe_cpu(self.meter.used_ms)
            await asyncio.sleep(MONITOR_INTERVAL_SEC)

    # -- frames from the worker process ----------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, (Answered, Sent, Done)):  # the request path first (a tuple: a union costs more)
            call = self._calls.get(frame.rid)
            if call is not None:
                call.push(frame)
                if len(call.events) >= PAUSE_FRAMES and self._paused_by is None and self.channel is not None:
                    self._paused_by = call  # its client reads slower than the function writes
                    self.channel.pause_reading()
        elif isinstance(frame, Consumed):
            call = self._calls.get(frame.rid)
            if call is not None:
                call.consumed(frame.messages)
        elif isinstance(frame, Listen):
            self._listen(frame.rid)
        elif isinstance(frame, TaskStarted):
            self._task_started(frame)
        elif isinstance(frame, TaskDone):
            self._task_done(frame)
        elif isinstance(frame, BeforeUnloadDone):
            waiter = self._unloaded.get(frame.reason)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(frame, Enqueue):
            task = asyncio.get_running_loop().create_task(self._enqueue(frame))
            self._enqueues.add(task)
            task.add_done_callback(self._enqueues.discard)
        elif (
            isinstance(frame, Booted | BootFailed | BootExhausted)
            and self._booted is not None
            and not self._booted.done()
        ):
            self._booted.set_result(frame)
        elif isinstance(frame, Outlived):
            self._outlived()

    def _outlived(self) -> None:
        """A sync handler runs on in the worker process after its request ended (its idle timeout,
        its client gone, its own limit under per_request): the worker retires, as at half its wall
        clock. New requests go to a fresh worker (whose threads are free), and the early drop ends
        this one once its other requests and background work are done, the handler's thread with it.
        """
        lifecycle = self._lifecycle
        if lifecycle is not None and self.status is WorkerStatus.ACTIVE:
            # Logged and retired once, as the lifecycle's own thresholds are.
            lifecycle.retire("sync handler outlived its request", StopReason.STUCK_HANDLER)

    def _unsent(self, fields: tuple[Any, ...], error: Exception) -> None:
        """A request's frame could not be pickled (something in its scope or body): it fails."""
        if kind_of(fields) in (Request, Body):
            call = self._calls.get(fields[0])
            if call is not None:
                call.push(Done(fields[0], Ended("error", f"{type(error).__name__}: {error}")))

    async def _enqueue(self, frame: Enqueue) -> None:
        """A job the function enqueues: the server enqueues it and answers with its id or the error."""
        job_id: int | None = None
        error: str | None = None
        try:
            if self.enqueue is None:
                raise JobsError("enqueue: no jobs store is running (use edgeruntime serve or EdgeClient)")
            # The frame is plain data, but any plain data: what a worker's enqueue sends, checked.
            if not isinstance(frame.function, str) or not isinstance(frame.body, str):
                raise JobsError("enqueue: bad arguments")
            if isinstance(frame.delay, bool) or not isinstance(frame.delay, int | float):
                raise JobsError("enqueue: bad arguments")
            if not (frame.max_attempts is None or type(frame.max_attempts) is int):
                raise JobsError("enqueue: bad arguments")
            if not (frame.idempotency_key is None or isinstance(frame.idempotency_key, str)):
                raise JobsError("enqueue: bad arguments")
            job_id = await self.enqueue(
                frame.function,
                json.loads(frame.body),
                delay=frame.delay,
                max_attempts=frame.max_attempts,
                idempotency_key=frame.idempotency_key,
            )
        except JobsError as exc:
            error = str(exc)
        except (ValueError, TypeError):  # not what a worker's enqueue sends
            error = "enqueue: bad arguments"
        except Exception as exc:
            logger.exception("enqueue from a worker of %s failed", self.name, extra={"function": self.name})
            error = f"enqueue failed: {type(exc).__name__}"
        if self.channel is not None:
            self.channel.send(Enqueued(frame.qid, job_id, error))

    def _process_exited(self) -> None:
        """The worker process has exited. Its channel closes with it, unless a process it started
        holds the other end (a fork, which its template or the server has just killed, or one in a
        session of its own, which is not): the server then closes its end for reading, so that
        what the worker wrote is read, and then the channel's end, as at any crash (`_on_close`)."""
        channel = self.channel
        if self.status is WorkerStatus.ENDED or channel is None or channel.closed or channel.transport is None:
            return
        try:
            sock = socket.socket(fileno=channel.transport.get_extra_info("socket").fileno())
        except (AttributeError, OSError, ValueError):  # no socket to shut down: closed at once
            channel.close()
            return
        try:
            sock.shutdown(socket.SHUT_RD)
        except OSError:
            channel.close()
        finally:
            sock.detach()  # the transport's: not closed here

    def _on_close(self) -> None:
        if self._booted is not None and not self._booted.done():
            self._booted.set_result(None)
        for waiter in self._unloaded.values():
            if not waiter.done():
                waiter.set_result(None)
        if self.status is WorkerStatus.ENDED:
            return
        # The process died on its own: a crash.
        self.status = WorkerStatus.ENDED
        self.end_reason = StopReason.CRASH
        self.state.background.cut(StopReason.CRASH)
        self._stop_monitor()
        if not self._starting:  # else the boot fails with the exit status (see `_exited`)
            self._reaping = asyncio.get_running_loop().create_task(self._crashed())

    async def _crashed(self) -> None:
        """Its in-flight requests fail (500) once the worker process's exit status is known."""
        status = await self._reap()
        logger.error(
            "worker process of %s exited unexpectedly (exit status %s): isolate: %s",
            self.name,
            status,
            self.id,
            extra={"function": self.name},
        )
        for call in self._calls.values():
            call.push(Done(0, Ended("crashed", status)))

    def _task_started(self, frame: TaskStarted) -> None:
        if not self.gave(frame.execution_id):
            # Never sent by the worker's own code: a function writing frames of its own. It ends
            # as a worker that sends an unreadable batch does (a crash), at once.
            assert self.channel is not None
            self.channel.refuse(f"a background task of execution {frame.execution_id!r:.60}, which it was not given")
            if self.proc is not None:
                self.proc.kill()
            return
        if frame.execution_id in self._given:  # its background work may start more of it later
            self._given.move_to_end(frame.execution_id)
        self._hold(frame.execution_id)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        ctx = ExecutionContext(function=self.name, worker=self.state, execution_id=frame.execution_id)
        entry = self.state.background.add(future, ctx)
        entry.name = frame.name
        self._tasks[frame.tid] = entry

    def _task_done(self, frame: TaskDone) -> None:
        entry = self._tasks.pop(frame.tid, None)
        if entry is None:
            return
        self._release(entry.execution_id)
        if entry.task.done():
            return
        if frame.outcome == TaskOutcome.FAILED and frame.error is not None:
            entry.task.set_exception(frame.error)
        elif frame.outcome == TaskOutcome.CUT:
            entry.cut_reason = frame.cut_reason
            entry.task.cancel()
        else:
            entry.task.set_result(None)

    # -- requests --------------------------------------------------------------------------

    async def handle(self, scope: Scope, receive: Receive, send: Send, ctx: ExecutionContext) -> None:
        """Forward one request (or WebSocket connection) to the worker process and its response back."""
        channel = self.channel
        assert channel is not None
        if channel.closed or self.status is WorkerStatus.ENDED:  # ended between routing and now
            reason = self.end_reason
            if reason is None or reason is StopReason.CRASH:
                raise WorkerCrashed(self.name, f"function {self.name}: worker process exited")
            raise limit_exceeded(self.name, reason)
        ctx.worker = self.state
        execution_id = ctx.execution_id
        rid = next(self._ids)
        call = self._calls[rid] = _Call(self.state.loop or asyncio.get_running_loop())
        self.in_flight += 1
        websocket = scope["type"] == "websocket"
        over = False  # the worker process said the request is over (Done)
        held = False
        try:
            skipped = not websocket and declares_no_body(scope)
            if skipped:
                # The function reads the same message; the server's own, awaited, costs a step.
                first: Message = {"type": "http.request", "body": b"", "more_body": False}
                size = 0
            else:
                first = await receive()
                if first.get("more_body") and _small_body(scope):
                    first = await _read_whole_body(first, receive)
                size = _body_size(first)
            slim = _slim(scope)
            if websocket:
                slim["subprotocols"] = list(scope.get("subprotocols") or ())
                if "websocket.http.response" in (scope.get("extensions") or {}):
                    slim["extensions"] = {"websocket.http.response": {}}
            given = self._given
            given[execution_id] = None
            if len(given) > GIVEN_EXECUTIONS:
                given.popitem(last=False)
            live = self._live
            live[execution_id] = live.get(execution_id, 0) + 1  # (see `_hold`)
            held = True
            # The Request frame's plain tuple (frames.to_wire), made here: the request path's first frame.
            channel.queue((rid, slim, first, execution_id, ctx.trigger, _REQUEST), size)
            if first.get("more_body") or websocket:
                call.pump = asyncio.get_running_loop().create_task(self._pump(rid, receive, call))
            else:  # started if the function asks (Listen): it waits for more, or for the client's leaving
                self._listeners[rid] = (receive, skipped)
            events = call.events
            while True:
                while not events:  # (here, not in a coroutine of `_Call`: one frame less to resume)
                    waiter = call.waiter = call.loop.create_future()
                    await waiter
                event = events.popleft()
                if type(event) is Answered:  # its whole response and its end in one frame (a small response)
                    ended = None
                    for message in event.messages:
                        if call.client_gone:
                            continue
                        try:
                            await send(message)
                        except OSError:  # the client left; the function's request is over already
                            call.client_gone = True
                        except RuntimeError as exc:  # the server refused it: the function's error
                            self._refused(scope, ctx, exc)
                            break
                    else:
                        over = True
                        if event.error is not None:  # the handler raised and got its 500 (or 502)
                            ctx.error = event.error
                    break
                if isinstance(event, Done):
                    over = True
                    ended = event.ended
                    if event.error is not None:  # the handler raised and got its 500 (or 502)
                        ctx.error = event.error
                    break
                refused = False
                for message in (event.message,) if isinstance(event, Sent) else event.messages:
                    if not call.client_gone:
                        try:
                            await send(message)
                        except OSError:  # the client left (a server of ASGI 2.4 says so here)
                            call.client_gone = True
                            gone = "websocket.disconnect" if websocket else "http.disconnect"
                            channel.send(Body(rid, {"type": gone, "code": 1006} if websocket else {"type": gone}))
                        except RuntimeError as exc:
                            # The server refused what the function sent (a body longer or shorter
                            # than its content-length, a second start): the function's error, as
                            # inline, where its `send` raises it. The request ends here (Cancel).
                            self._refused(scope, ctx, exc)
                            refused = True
                            break
                    call.delivered += 1
                    if call.delivered >= ACK_BATCH:
                        channel.send(Delivered(rid, call.delivered))
                        call.delivered = 0
                    if call.pump is None and message.get("more_body") and message.get("type") == "http.response.body":
                        # A streamed response: the client leaving must reach the function (it cancels the stream).
                        self._listen(rid)
                if refused:
                    ended = None
                    break
                if self._paused_by is call and len(call.events) <= PAUSE_FRAMES // 4:
                    self._resume_reading()
        finally:
            if not over:  # cancelled, or the client's side failed: the function must not go on for no one
                channel.send(Cancel(rid))  # a no-op once the process is gone
            self.in_flight -= 1
            del self._calls[rid]
            if held:
                self._release(execution_id)
            if self._paused_by is call:
                self._resume_reading()
            self._listeners.pop(rid, None)
            if call.pump is not None:
                call.pump.cancel()
        if ended is None:
            return
        if ended.reason == "limit":
            logger.error(
                "user worker failed to respond: request has been cancelled by supervisor (%s)",
                ended.detail,
                extra={"function": self.name},
            )
            raise limit_exceeded(self.name, StopReason(str(ended.detail)))
        if ended.reason == "crashed":
            raise WorkerCrashed(self.name, f"function {self.name}: worker process exited (status {ended.detail})")
        if ended.reason == "too_large":
            raise PayloadTooLarge(self.name, self.limits.max_request_body_bytes)
        if ended.reason == "error":
            raise WorkerCrashed(self.name, f"function {self.name}: {ended.detail}")
        raise asyncio.CancelledError

    def _refused(self, scope: Scope, ctx: ExecutionContext, exc: RuntimeError) -> None:
        """The server refused a message the function sent (a body longer or shorter than its
        content-length, a second start): the function's error, as inline, where its `send` raises it."""
        logger.error(
            "function %s raised while handling %s %s: %s",
            self.name,
            scope.get("method", "GET"),
            scope["path"],
            exc,
            extra={"function": self.name},
        )
        ctx.error = describe_error(exc)

    def _resume_reading(self) -> None:
        self._paused_by = None
        if self.channel is not None:
            self.channel.resume_reading()

    def _listen(self, rid: int) -> None:
        """Start forwarding what the client of request `rid` sends next, if that is not done yet."""
        call = self._calls.get(rid)
        listener = self._listeners.pop(rid, None)
        if call is not None and call.pump is None and listener is not None:
            receive, skipped = listener
            call.pump = asyncio.get_running_loop().create_task(self._pump(rid, receive, call, skipped))

    async def _pump(self, rid: int, receive: Receive, call: _Call, skipped: bool = False) -> None:
        """Forward what the client sends next (body chunks, WebSocket messages, its leaving), as
        fast as the function reads it: at most a window of messages ahead. `skipped`: the request's
        first message went without asking the server (it declares no body): the server's own
        copy of it, the first it gives, is not forwarded again."""
        channel = self.channel
        assert channel is not None
        try:
            while True:
                await call.wait_for_room()
                message = await receive()
                if skipped:
                    skipped = False
                    if message.get("type") == "http.request" and not message.get("body"):
                        continue
                call.unacked += 1
                channel.send(Body(rid, message))
                kind = message["type"]
                if kind == "http.disconnect" or kind == "websocket.disconnect":
                    return
        except PayloadTooLarge:
            channel.send(Cancel(rid))
            call.push(Done(rid, Ended("too_large")))

    # -- lifecycle -------------------------------------------------------------------------

    async def beforeunload(self, reason: StopReason) -> None:
        """Dispatch `beforeunload` in the worker process and wait (a little) for its listeners."""
        if self.channel is None or self.channel.closed or reason in self._unloaded:
            return
        waiter = self._unloaded[reason] = asyncio.get_running_loop().create_future()
        self.channel.send(BeforeUnload(reason))
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=5)
        except TimeoutError:
            logger.warning("beforeunload listeners of %s did not finish within 5 s", self.name)

    def pending_background(self) -> list[BackgroundTask]:
        return list(self.state.background.pending)

    def on_background_done(self, callback: Callable[[BackgroundTask], None]) -> None:
        self.state.background.observers.append(callback)

    def _stop_monitor(self) -> None:
        if self._monitor is not None and self._monitor is not asyncio.current_task():
            self._monitor.cancel()

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        if self.channel is not None:
            self.channel.close()

    async def _reap(self) -> int | None:
        """The worker process's exit status once it has exited (killed after REAP_TIMEOUT_SEC)."""
        if self.proc is None:
            return None
        self.exit_status = await self.proc.wait(REAP_TIMEOUT_SEC)
        return self.exit_status

    async def end(self, reason: StopReason) -> list[str]:
        """Kill the process: in-flight requests get 546, background work is cut with `reason`."""
        self.status = WorkerStatus.ENDED
        self.end_reason = reason
        self._stop_monitor()
        unloading = [w for w in self._unloaded.values() if not w.done()]
        if unloading:  # let a beforeunload dispatched just before the limit finish, briefly
            await asyncio.wait(unloading, timeout=BEFOREUNLOAD_GRACE_SEC)
        self._kill()
        for call in self._calls.values():
            call.push(Done(0, Ended("limit", reason)))
        cut = self.state.background.cut(reason)
        if cut:
            await asyncio.gather(*(t.task for t in cut), return_exceptions=True)
        await self._reap()
        return [t.name for t in cut]
