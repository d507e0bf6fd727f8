"""How the server starts a worker process: forked from its function's template, or spawned.

A function's **template** (:mod:`edgeruntime.workers.process.template`) is a process started in
the function's sandbox that has imported the runtime and forks that function's worker processes
on request: a worker then boots in milliseconds instead of the ~0.1–0.2 s of a fresh interpreter,
and shares the template's memory. :class:`WorkerTemplate` is the server's side of it: it starts
the template at the function's first worker, hands each new worker's end of its channel to it
(``SCM_RIGHTS``), learns the worker's exit status from it, and starts a new template when the old
one died or when the function's sandbox would now be another (under bubblewrap: the entries of the
functions directory it binds changed). A template whose workers have all ended is ended after
:data:`TEMPLATE_IDLE_SEC`, so a function invoked once costs no process for long.

Either way the server learns the worker's pid from the kernel (the worker announces itself with
its credentials, ``SCM_CREDENTIALS``, see :func:`peer_pid`), watches its CPU and memory in
``/proc`` and kills it itself (for a forked worker, which is not the server's child, through the
``pidfd`` its template took before it could reap it and handed over with its pid).
:class:`SpawnedProcess` and :class:`ForkedProcess` are the two kinds of worker process as the
server handles them. Where forking is not available (:func:`forking_problem`) or a template
refuses (it has a thread), workers are spawned as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Coroutine, Hashable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeruntime.core.descriptors import exhaustion
from edgeruntime.core.logs import log_backlog
from edgeruntime.exceptions import BootError, ConfigError, ResourceExhausted, WorkerCrashed

if TYPE_CHECKING:
    from edgeruntime.workers.process.sandbox import WorkerLauncher

__all__ = [
    "EXITED",
    "FORK",
    "FORKED",
    "KILL",
    "MAX_OUTPUT_LINE_BYTES",
    "MESSAGE",
    "NOT_FORKED",
    "READY",
    "TEMPLATE_IDLE_SEC",
    "THREADS",
    "ForkedProcess",
    "ProcessOutput",
    "SpawnedProcess",
    "TemplateProcess",
    "WorkerProcessHandle",
    "WorkerTemplate",
    "forking_problem",
    "peer_pid",
]

logger = logging.getLogger("edgeruntime")

#: How long a template may take to start (a fresh interpreter importing the runtime).
TEMPLATE_BOOT_TIMEOUT_SEC = 30.0
#: How long a template with no worker left is kept for the next one before it is ended.
TEMPLATE_IDLE_SEC = 120.0
#: How long the template may take to answer a request to fork.
FORK_TIMEOUT_SEC = 10.0
_CREDENTIALS = struct.Struct("3i")
#: Descriptors the server receives from a template are not inherited by what it starts.
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

#: The control protocol between the server and a template (:mod:`edgeruntime.workers.process.template`).
#: One control message: its kind and two signed 64-bit integers, in one packet.
MESSAGE = struct.Struct("!Bqq")

# server → template
#: (request id, 0), the new worker's end of its channel attached: fork a worker process.
FORK = 1
#: (pid as the template sees it, 0): kill that worker process (one not yet announced to the server).
KILL = 2

# template → server
#: (the template's pid as it sees it, number of modules loaded): ready to fork.
READY = 3
#: (request id, the worker's pid as the template sees it), the worker's pidfd attached.
FORKED = 4
#: (request id, errno, or THREADS): no worker was forked.
NOT_FORKED = 5
#: (the worker's pid as the template sees it, its exit status: the code, or minus the signal that ended it).
EXITED = 6

#: NOT_FORKED's reason when the template has more than one thread.
THREADS = -1


@functools.cache
def forking_problem() -> str | None:
    """None if worker processes can be forked from templates here, else why not."""
    if not sys.platform.startswith("linux"):
        return f"templates need Linux (this is {sys.platform})"
    for module, name in ((os, "fork"), (os, "pidfd_open"), (socket, "send_fds"), (signal, "pidfd_send_signal")):
        if not hasattr(module, name):
            return f"this Python has no {module.__name__}.{name}"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as exc:
        return f"this kernel has no pidfd_open ({exc.strerror})"
    return None


async def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process that announced itself on `sock` (SO_PASSCRED set before it could),
    as this process sees it: the kernel translates it out of the worker's PID namespace.
    None if `sock`'s other end closed first."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    readable: asyncio.Event = asyncio.Event()
    loop.add_reader(sock.fileno(), readable.set)
    try:
        for _ in range(100):  # a wake-up with nothing to read is rare: a few at most
            try:
                data, ancillary, _, _ = sock.recvmsg(1, socket.CMSG_SPACE(_CREDENTIALS.size))
                break
            except BlockingIOError:
                await readable.wait()
                readable.clear()
            except ConnectionError:
                return None
        else:
            return None
    finally:
        loop.remove_reader(sock.fileno())
    if not data:
        return None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(payload) >= _CREDENTIALS.size:
            pid: int = _CREDENTIALS.unpack_from(payload)[0]
            return pid
    return None


#: A line a function's process writes to its stdout or stderr is logged up to this long: the rest is cut.
MAX_OUTPUT_LINE_BYTES = 64 * 1024
#: What is read from a function's output at a time.
_OUTPUT_READ_BYTES = 16 * 1024
#: Lines of a function's output logged in one turn of the server's event loop: a flood of short
#: lines takes turns with the requests.
_OUTPUT_LINES_PER_TURN = 64
#: While the server's log holds this many lines not written yet, its functions' output is not read:
#: a function writing faster than the log goes out waits on its full pipe.
OUTPUT_BACKLOG_LINES = 10_000
_OUTPUT_RETRY_SEC = 0.05
#: What a drain (at a worker's exit) reads at most from each of a function's pipes.
_OUTPUT_DRAIN_BYTES = 1024 * 1024


#: How far back a worker's log record may say it was made (its lines wait in the pipe while the
#: server's log is backed up); a time older than this, or ahead of the server's, is not believed.
MAX_RECORD_AGE_SEC = 600.0


def _made_at(value: object) -> float | None:
    """When a worker's log record was made: its ``time`` (as the JSON log format writes it, in
    UTC), or None if it has none that reads as one, or one a function made up (a line dated
    before an incident, or years away)."""
    if type(value) is not str:
        return None
    try:
        made = datetime.fromisoformat(value)
    except ValueError:
        return None
    if made.tzinfo is None:
        return None
    created = made.timestamp()
    now = time.time()
    return created if now - MAX_RECORD_AGE_SEC <= created <= now + 1 else None


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_LEVELS["critical"] = logging.CRITICAL


class Executions(Protocol):
    """What tells whether a function's process may name an execution (a worker, see ``parent.py``)."""

    def gave(self, execution_id: str) -> bool:
        """Whether `execution_id` was given to it."""


class _Stream:
    """One of the pipes of :class:`ProcessOutput`, as the server reads it."""

    __slots__ = ("cut", "fd", "level", "offset", "partial", "pending", "reading", "records")

    def __init__(self, fd: int, level: int, records: bool) -> None:
        self.fd = fd
        #: The level of a line that is no log record.
        self.level = level
        #: Lines may be log records (JSON objects) of the worker's own logging (stderr).
        self.records = records
        #: The start of a line whose end has not been read yet (at most MAX_OUTPUT_LINE_BYTES).
        self.partial = bytearray()
        #: How much of that line was cut.
        self.cut = 0
        #: What was read, logged up to `offset`.
        self.pending = b""
        self.offset = 0
        self.reading = False

    @property
    def waiting(self) -> bool:
        """Whether some of what was read is not logged yet."""
        return self.offset < len(self.pending)


class ProcessOutput:
    """The stdout and stderr of a function's processes (a template and the workers it forks, or a
    worker the server spawns): two pipes, read by the server on its event loop. Each line becomes a
    log line of the function (logger ``edgeruntime.function``, ``function=`` its name), under
    ``--log-format json`` a JSON record like any other, so nothing a function writes around
    ``print`` (``os.write(1, ...)``, a subprocess, a C extension) reaches the server's log as it
    is: it cannot pass for another function's line, nor can the function reopen the server's log
    file through ``/proc/self/fd/1``.

    A line of stderr that is a JSON object with a level and a message is a record of the worker's
    own logging (:func:`edgeruntime.workers.process.child.WorkerProcess.boot` logs so): it keeps
    its level, logger, message and traceback, but its function is this one's, and its execution id
    is kept only if one of :meth:`add_worker`'s workers was given that execution. A line longer
    than MAX_OUTPUT_LINE_BYTES is cut (the log line says how much). The server reads a bounded
    amount per turn of its loop, and nothing while its own log is backed up, so a function
    flooding its output blocks on its full pipe instead of growing the server's memory.
    """

    def __init__(self, function: str) -> None:
        self.function = function
        self.logger = logging.getLogger("edgeruntime.function")
        self._workers: weakref.WeakSet[Executions] = weakref.WeakSet()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paused: asyncio.TimerHandle | None = None
        self.closed = False
        out_read, out_write = os.pipe()
        try:
            err_read, err_write = os.pipe()
        except OSError:
            os.close(out_read)
            os.close(out_write)
            raise
        #: The ends the function's process gets as its stdout and stderr (closed here once it has them).
        self.stdout: int | None = out_write
        self.stderr: int | None = err_write
        self._streams = [_Stream(out_read, logging.INFO, False), _Stream(err_read, logging.ERROR, True)]
        for stream in self._streams:
            os.set_blocking(stream.fd, False)

    def add_worker(self, worker: Executions) -> None:
        """Keep the execution ids that `worker` was given on the lines it writes (while it lives)."""
        self._workers.add(worker)

    def started(self) -> None:
        """The process has its ends of the pipes: the server's copies are closed (the pipes end
        when the process and what it started have exited) and reading starts."""
        self._close_write_ends()
        self._loop = asyncio.get_running_loop()
        for stream in self._streams:
            self._want(stream)

    def _close_write_ends(self) -> None:
        for fd in (self.stdout, self.stderr):
            if fd is not None:
                os.close(fd)
        self.stdout = self.stderr = None

    def _want(self, stream: _Stream) -> None:
        """Read `stream` if nothing read waits to be logged and the server's log is not backed up."""
        loop = self._loop
        if loop is None or self.closed or stream.fd < 0:
            return
        wanted = not stream.waiting and self._paused is None
        if wanted and not stream.reading:
            loop.add_reader(stream.fd, self._readable, stream)
            stream.reading = True
        elif not wanted and stream.reading:
            loop.remove_reader(stream.fd)
            stream.reading = False

    def _readable(self, stream: _Stream) -> None:
        if self._read(stream):
            self._log_pending(stream, _OUTPUT_LINES_PER_TURN)
        self._after_turn(stream)

    def _read(self, stream: _Stream) -> bool:
        """Read what `stream` holds into `pending`; False if nothing (at its end: closed)."""
        try:
            data = os.read(stream.fd, _OUTPUT_READ_BYTES)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._ended(stream)
            return False
        stream.pending = data
        stream.offset = 0
        return True

    def _after_turn(self, stream: _Stream) -> None:
        loop = self._loop
        if loop is None or self.closed:
            return
        if self._paused is None and log_backlog() >= OUTPUT_BACKLOG_LINES:
            self._paused = loop.call_later(_OUTPUT_RETRY_SEC, self._resume)
            for each in self._streams:
                self._want(each)
            return
        self._want(stream)
        if stream.waiting and self._paused is None:
            loop.call_soon(self._next_lines, stream)

    def _next_lines(self, stream: _Stream) -> None:
        if self.closed or self._paused is not None:
            return
        self._log_pending(stream, _OUTPUT_LINES_PER_TURN)
        self._after_turn(stream)

    def _resume(self) -> None:
        self._paused = None
        if log_backlog() >= OUTPUT_BACKLOG_LINES and self._loop is not None:
            self._paused = self._loop.call_later(_OUTPUT_RETRY_SEC, self._resume)
            return
        for stream in self._streams:
            self._want(stream)
            if stream.waiting and self._loop is not None:
                self._loop.call_soon(self._next_lines, stream)

    def _log_pending(self, stream: _Stream, lines: int | None) -> None:
        """Log up to `lines` whole lines of what `stream` read (all, if None)."""
        data = stream.pending
        start = stream.offset
        end = len(data)
        while start < end and (lines is None or lines > 0):
            newline = data.find(b"\n", start)
            if newline < 0:
                break
            self._take(stream, data, start, newline)
            self._line(stream)
            start = newline + 1
            if lines is not None:
                lines -= 1
        if start < end and (lines is None or lines > 0):  # the start of a line still being written
            self._take(stream, data, start, end)
            start = end
        if start >= end:
            stream.pending = b""
            start = 0
        stream.offset = start

    @staticmethod
    def _take(stream: _Stream, data: bytes, start: int, end: int) -> None:
        """Add `data[start:end]` to the line `stream` holds, as much as a line may hold."""
        room = MAX_OUTPUT_LINE_BYTES - len(stream.partial)
        if end - start > room:
            stream.cut += end - start - room
            end = start + room
        if end > start:
            stream.partial += data[start:end]

    def _line(self, stream: _Stream) -> None:
        """Log the line `stream` holds."""
        data, cut = bytes(stream.partial), stream.cut
        stream.partial.clear()
        stream.cut = 0
        text = data.decode("utf-8", "replace")
        if text.endswith("\r"):
            text = text[:-1]
        if stream.records and not cut and text.startswith("{") and self._record(text):
            return
        if cut:
            text += f" [{cut} more bytes of this line were cut]"
        self._log(stream.level, self.logger.name, text, None, None)

    def _record(self, text: str) -> bool:
        """Log `text` if it is a record of the worker's own logging (a JSON object); False if not."""
        try:
            data = json.loads(text)
        except ValueError:
            return False
        if type(data) is not dict:
            return False
        level = _LEVELS.get(data.get("level"))  # type: ignore[arg-type]
        message = data.get("message")
        if level is None or type(message) is not str:
            return False
        name = data.get("logger")
        execution_id = data.get("execution_id")
        if type(execution_id) is not str or not self._gave(execution_id):
            execution_id = None
        traceback = data.get("traceback")
        self._log(
            level,
            name if type(name) is str else self.logger.name,
            message,
            execution_id,
            traceback if type(traceback) is str else None,
            _made_at(data.get("time")),
        )
        return True

    def _gave(self, execution_id: str) -> bool:
        return any(worker.gave(execution_id) for worker in self._workers)

    def _log(
        self,
        level: int,
        name: str,
        message: str,
        execution_id: str | None,
        traceback: str | None,
        created: float | None = None,
    ) -> None:
        logger = self.logger
        if not logger.isEnabledFor(level):
            return
        record = logging.LogRecord(name, level, "", 0, message, None, None)
        if created is not None:  # when the function logged it, not when its line was read here
            record.created = created
            record.msecs = created % 1 * 1000
        record.function = self.function
        record.execution_id = execution_id
        record.contained = True
        if traceback:
            record.traceback = traceback
        logger.handle(record)

    def _ended(self, stream: _Stream) -> None:
        """`stream`'s pipe ended: what is left of its last line is logged, and it is closed."""
        if stream.fd < 0:
            return
        self._log_pending(stream, None)
        if stream.partial or stream.cut:
            self._line(stream)
        if stream.reading and self._loop is not None:
            self._loop.remove_reader(stream.fd)
            stream.reading = False
        os.close(stream.fd)
        stream.fd = -1

    def drain(self) -> None:
        """Log what the pipes hold now (a worker process has exited: its last lines come before
        the server says so); what a line still being written has so far waits for its end."""
        if self.closed:
            return
        for stream in self._streams:
            if stream.fd < 0:
                continue
            self._log_pending(stream, None)
            for _ in range(_OUTPUT_DRAIN_BYTES // _OUTPUT_READ_BYTES):
                if not self._read(stream):
                    break
                self._log_pending(stream, None)
            self._want(stream)

    def close(self) -> None:
        """Log what is left (a last line without its newline too) and close the pipes."""
        if self.closed:
            return
        self.drain()
        self.closed = True
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        self._close_write_ends()
        for stream in self._streams:
            self._ended(stream)


class WorkerProcessHandle(Protocol):
    """A worker process as the server handles it, however it was started."""

    @property
    def pid(self) -> int | None:
        """The pid of the process the server started or, forked, the worker's once announced."""

    @property
    def output(self) -> ProcessOutput | None:
        """Where its stdout and stderr go (its template's, for a forked worker)."""

    def poll(self) -> int | None:
        """Its exit status (minus the signal that ended it) once known, else None."""

    def announced(self, pid: int) -> None:
        """The worker process announced itself as `pid` (as the server sees it)."""

    def exited(self) -> bool:
        """Whether it has exited: what /proc then says of its pid may be another process's."""

    def kill(self) -> None:
        """SIGKILL it (a no-op once it has exited)."""

    def watch(self, on_exit: Callable[[], None]) -> None:
        """Call `on_exit` once it has exited, what it started in its session ended first (see
        :class:`SpawnedProcess`); never where its exit cannot be watched."""

    async def wait(self, timeout: float) -> int | None:
        """Its exit status, once it has exited; killed if it has not after `timeout` seconds."""


class SpawnedProcess:
    """A process the server started itself in a session of its own (``start_new_session``): a
    worker (under bubblewrap: bubblewrap, its parent) or a template.

    A worker's is watched (:meth:`watch`) through a pidfd, which tells its exit without reaping
    it: what it started and left running (a ``subprocess.Popen``, an ``os.fork``) is then SIGKILLed
    with its process group, whose id is still the worker's while the worker is not reaped, and only
    then is it reaped (:meth:`wait`). A process that left the session (``setsid``) is not in it.
    """

    def __init__(self, proc: subprocess.Popen[bytes], output: ProcessOutput | None = None) -> None:
        self.proc = proc
        #: Its stdout and stderr (a worker's), closed once it is reaped.
        self._output = output
        #: Watched: done once it has exited and its process group was killed.
        self._exit: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> ProcessOutput | None:
        return self._output

    def poll(self) -> int | None:
        return self.proc.poll()

    def announced(self, pid: int) -> None:
        pass

    def exited(self) -> bool:
        if self.proc.returncode is not None:
            return True
        if self._exit is not None:  # not reaped before `wait`: until then its pid is no other process's
            return self._exit.done()
        return self.proc.poll() is not None

    def kill(self) -> None:
        if self.proc.returncode is None:  # not reaped: its pid, and its group's id, are still its own
            self._kill_group()

    def _kill_group(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except OSError:  # a member it may not signal: the process itself at least
            with contextlib.suppress(OSError):
                os.kill(self.proc.pid, signal.SIGKILL)

    def watch(self, on_exit: Callable[[], None]) -> None:
        if self._exit is not None or self.proc.returncode is not None or not hasattr(os, "pidfd_open"):
            return
        try:
            pidfd = os.pidfd_open(self.proc.pid)  # not reaped yet: the pid is still this process's
        except OSError:  # (out of descriptors: its crash is seen when its channel closes, as before)
            return
        loop = asyncio.get_running_loop()
        exit_ = self._exit = loop.create_future()

        def exited() -> None:
            loop.remove_reader(pidfd)
            self._kill_group()  # before it is reaped: what it left running ends with it
            os.close(pidfd)
            if not exit_.done():
                exit_.set_result(None)
            on_exit()

        loop.add_reader(pidfd, exited)

    async def wait(self, timeout: float) -> int | None:
        try:
            return await self._status(timeout)
        finally:
            if self._output is not None and self.proc.returncode is not None:
                self._output.close()  # its last lines are logged before what the server says of its exit

    async def _status(self, timeout: float) -> int | None:
        exit_ = self._exit
        if exit_ is not None and self.proc.returncode is None:
            for _ in range(2):
                try:
                    await asyncio.wait_for(asyncio.shield(exit_), timeout)
                except TimeoutError:
                    self.kill()
                    continue
                status = self.proc.poll()  # it has exited: reaped at once
                if status is not None:
                    return status
                break
        return await asyncio.get_running_loop().run_in_executor(None, self._wait, timeout)

    def _wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=timeout)


class ForkedProcess:
    """A worker process forked by a template: not the server's child, so the template reaps it and
    reports its exit status. The server signals it and tells whether it has exited through the
    pidfd the template took before it could reap it: once reaped, its pid may be another
    process's before the server has read the report, but that pidfd still names the worker."""

    def __init__(
        self, template: TemplateProcess, template_pid: int, status: asyncio.Future[int | None], pidfd: int | None
    ) -> None:
        self.template = template
        #: Its pid in the template's view (under bubblewrap, in the function's PID namespace).
        self.template_pid = template_pid
        self.status = status
        self._pid: int | None = None
        #: None if the template's pidfd did not arrive (out of descriptors): the template then kills it.
        self._pidfd = pidfd
        self._exit: select.poll | None = None
        if pidfd is not None:
            self._exit = select.poll()
            self._exit.register(pidfd, select.POLLIN)  # readable once the process has exited
        status.add_done_callback(lambda _: self._close_pidfd())

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def output(self) -> ProcessOutput | None:
        return self.template.output

    def poll(self) -> int | None:
        return self.status.result() if self.status.done() else None

    def announced(self, pid: int) -> None:
        self._pid = pid

    def exited(self) -> bool:
        if self.status.done():
            return True
        return self._exit is not None and bool(self._exit.poll(0))

    def kill(self) -> None:
        if self.status.done():
            return
        if self._pidfd is not None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                return
            except ProcessLookupError:
                return
            except OSError:
                pass
        self.template.kill(self.template_pid)

    def watch(self, on_exit: Callable[[], None]) -> None:
        # Its template reports its exit once it has killed what the worker left running (see
        # :meth:`edgeruntime.workers.process.template.Template.reap`).
        self.status.add_done_callback(lambda _: on_exit())

    async def wait(self, timeout: float) -> int | None:
        try:
            return await self._status(timeout)
        finally:
            if self.template.output is not None:  # its last lines are logged before what the server says of its exit
                self.template.output.drain()

    async def _status(self, timeout: float) -> int | None:
        try:
            return await asyncio.wait_for(asyncio.shield(self.status), timeout)
        except TimeoutError:
            self.kill()
        try:
            return await asyncio.wait_for(asyncio.shield(self.status), timeout)
        except TimeoutError:  # its template does not answer: it ends with its template
            return None

    def _close_pidfd(self) -> None:
        pidfd, self._pidfd, self._exit = self._pidfd, None, None
        if pidfd is not None:
            os.close(pidfd)


class TemplateProcess:
    """One running template process, as the server sees it: its control socket and its workers."""

    def __init__(
        self,
        function: str,
        proc: subprocess.Popen[bytes],
        control: socket.socket,
        view: Hashable,
        output: ProcessOutput | None = None,
    ) -> None:
        self.function = function
        self.proc = proc
        #: The stdout and stderr of the template and of the workers it forks.
        self.output = output
        self.control = control
        #: The sandbox it was started in (:meth:`WorkerLauncher.view`): a worker needing another gets another template.
        self.view = view
        self.alive = True
        #: The template's own pid as it sees itself, and how many modules it had loaded, once ready.
        self.ready: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._requests: dict[int, asyncio.Future[tuple[int, asyncio.Future[int | None], int | None] | int]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        control.setblocking(False)
        self._loop.add_reader(control.fileno(), self._readable)
        #: Done once the template has exited (or was let go).
        self.lost: asyncio.Future[None] = self._loop.create_future()
        #: Told when its last worker has exited.
        self.idle_callback: Callable[[TemplateProcess], None] | None = None

    @property
    def live(self) -> int:
        """Its worker processes that have not exited yet."""
        return len(self._exits)

    async def fork(self, channel: socket.socket) -> ForkedProcess | None:
        """Fork a worker process that talks on `channel`; None if the template refuses (it has a
        thread); ConnectionError if the template is gone, TimeoutError if it does not answer."""
        if not self.alive:
            raise ConnectionResetError("the template process has exited")
        request = next(self._ids)
        answer = self._requests[request] = self._loop.create_future()
        try:
            socket.send_fds(self.control, [MESSAGE.pack(FORK, request, 0)], [channel.fileno()])
            reply = await asyncio.wait_for(asyncio.shield(answer), FORK_TIMEOUT_SEC)
        except BaseException:
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                self._unwanted(answer.result())  # forked just as its caller gave up
            raise
        finally:
            self._requests.pop(request, None)
        if isinstance(reply, int):
            if reply == THREADS:
                return None
            raise OSError(reply, os.strerror(reply))
        template_pid, status, pidfd = reply
        return ForkedProcess(self, template_pid, status, pidfd)

    def _unwanted(self, reply: tuple[int, asyncio.Future[int | None], int | None] | int) -> None:
        """A worker forked for no one: killed, and its pidfd closed."""
        if isinstance(reply, tuple):
            template_pid, _, pidfd = reply
            self.kill(template_pid)
            if pidfd is not None:
                os.close(pidfd)

    def kill(self, template_pid: int) -> None:
        """Ask the template to SIGKILL its worker `template_pid`."""
        if self.alive:
            try:
                self.control.send(MESSAGE.pack(KILL, template_pid, 0))
            except OSError:
                pass

    def _readable(self) -> None:
        for _ in range(1000):  # what has arrived, in bounded turns
            try:
                data, fds, _, _ = socket.recv_fds(self.control, MESSAGE.size + 1, 1, _CLOEXEC)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            pidfd = fds[0] if fds else None
            if len(data) != MESSAGE.size or MESSAGE.unpack(data)[0] != FORKED:
                for fd in fds:  # only a FORKED message carries one
                    os.close(fd)
                pidfd = None
            if not data:
                self._gone()
                return
            if len(data) != MESSAGE.size:
                continue
            kind, first, second = MESSAGE.unpack(data)
            if kind == READY and not self.ready.done():
                self.ready.set_result((first, second))
            elif kind == FORKED:
                status: asyncio.Future[int | None] = self._loop.create_future()
                self._exits[second] = status
                answer = self._requests.get(first)
                if answer is not None and not answer.done():
                    answer.set_result((second, status, pidfd))
                else:  # nobody waits for it any more (timed out): it is not wanted
                    self._unwanted((second, status, pidfd))
            elif kind == NOT_FORKED:
                answer = self._requests.get(first)
                if answer is not None and not answer.done():
                    answer.set_result(second)
            elif kind == EXITED:
                exited = self._exits.pop(first, None)
                if exited is not None and not exited.done():
                    exited.set_result(second)
                if not self._exits and self.idle_callback is not None:
                    self.idle_callback(self)

    def _gone(self) -> None:
        """The control socket closed: the template exited (on its own, or because it was closed)."""
        if not self.alive:
            return
        self.alive = False
        self._loop.remove_reader(self.control.fileno())
        self.control.close()
        gone = ConnectionResetError("the template process has exited")
        if not self.ready.done():
            self.ready.set_exception(gone)
        for answer in self._requests.values():
            if not answer.done():
                answer.set_exception(gone)
        for exited in self._exits.values():  # killed with it (PR_SET_PDEATHSIG): their status is lost
            if not exited.done():
                exited.set_result(None)
        self._exits.clear()
        if not self.lost.done():
            self.lost.set_result(None)

    async def close(self, timeout: float = 5.0) -> int | None:
        """End the template (and any worker it still has) and reap it; its exit status."""
        self._gone()
        try:
            return await SpawnedProcess(self.proc).wait(timeout)
        finally:
            if self.output is not None:
                self.output.close()


class WorkerTemplate:
    """One function's template, from the server: forks the function's worker processes, starting a
    template process first when there is none, it died, or the function's sandbox changed."""

    def __init__(self, launcher: WorkerLauncher, function: str) -> None:
        self.launcher = launcher
        self.function = function
        #: The template process new workers are forked from.
        self.current: TemplateProcess | None = None
        #: Older template processes, ended once their last worker has exited.
        self.retired: set[TemplateProcess] = set()
        #: How many template processes were started (one, unless one died or the sandbox changed).
        self.starts = 0
        #: Set when a template refused to fork (it had a thread): workers are spawned from then on.
        self.refused = False
        self._lock = asyncio.Lock()
        self._idle: dict[TemplateProcess, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def fork(self, channel: socket.socket, directory: Path, tmp_size_mb: float) -> ForkedProcess | None:
        """A worker process of the function in `directory`, talking on `channel`; None if workers must be spawned.

        Raises BootError, WorkerCrashed or ResourceExhausted as starting a worker process does.
        """
        if self.refused:
            return None
        view = self.launcher.view(directory, tmp_size_mb)
        for attempt in range(2):  # a template that died just before it was asked: once more, with a new one
            process = await self._template(directory, tmp_size_mb, view)
            idle = self._idle.pop(process, None)
            if idle is not None:
                idle.cancel()
            try:
                forked = await process.fork(channel)
            except ConnectionError:
                if attempt:
                    raise WorkerCrashed(
                        self.function, f"function {self.function}: its template process exited"
                    ) from None
                continue
            except TimeoutError:
                self._retire(process)
                raise WorkerCrashed(
                    self.function, f"function {self.function}: its template process did not answer"
                ) from None
            except OSError as exc:
                self._check_idle(process)
                if exhaustion(exc) is not None:
                    raise ResourceExhausted(self.function, f"forking a worker process of {self.function}") from exc
                raise BootError(
                    self.function, f"function {self.function}: cannot fork a worker process: {exc}"
                ) from None
            if forked is None:
                self.refused = True
                logger.warning(
                    "the template of %s has a thread and cannot fork safely: its workers are started as new processes",
                    self.function,
                    extra={"function": self.function},
                )
                self._retire(process)
            return forked
        return None  # not reached: the second attempt returned or raised

    async def _template(self, directory: Path, tmp_size_mb: float, view: Hashable) -> TemplateProcess:
        async with self._lock:
            process = self.current
            if process is not None and process.alive and process.view == view:
                return process
            if process is not None:
                self._retire(process)
            self.current = await self._start(directory, tmp_size_mb, view)
            return self.current

    async def _start(self, directory: Path, tmp_size_mb: float, view: Hashable) -> TemplateProcess:
        """Start a template process for the function in `directory` and wait until it is ready."""
        name = self.function
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            if exhaustion(exc) is None:
                raise
            raise ResourceExhausted(name, f"starting the template process of {name}") from exc
        output: ProcessOutput | None = None
        try:
            output = ProcessOutput(name)
            argv, cwd = self.launcher.command(name, directory, theirs.fileno(), os.getpid(), tmp_size_mb, template=True)
            # Popen only forks and execs: it does not wait for the child.
            proc = subprocess.Popen(  # noqa: ASYNC220
                argv,
                pass_fds=(theirs.fileno(),),
                env=self.launcher.template_environ(os.environ),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                # Its workers' too (they keep the template's stdio): what they write is logged as theirs.
                stdout=output.stdout,
                stderr=output.stderr,
                start_new_session=True,  # a terminal's Ctrl-C goes to the server alone (see parent.py)
            )
        except ConfigError as exc:  # no uid left for it
            ours.close()
            if output is not None:
                output.close()
            raise BootError(name, f"function {name}: {exc}") from None
        except OSError as exc:
            ours.close()
            if output is not None:
                output.close()
            if exhaustion(exc) is not None:
                raise ResourceExhausted(name, f"starting the template process of {name}") from exc
            raise BootError(name, f"function {name}: cannot start its template process: {exc}") from None
        finally:
            theirs.close()
        output.started()
        self.starts += 1
        process = TemplateProcess(name, proc, ours, view, output)
        process.idle_callback = self._check_idle
        process.lost.add_done_callback(lambda _: self._lost(process))
        try:
            await asyncio.wait_for(asyncio.shield(process.ready), TEMPLATE_BOOT_TIMEOUT_SEC)
        except TimeoutError:
            await process.close()
            raise BootError(name, f"function {name}: its template process did not start in time") from None
        except ConnectionError:
            status = await process.close()
            raise WorkerCrashed(
                name, f"function {name}: its template process exited while starting (exit status {status})"
            ) from None
        return process

    def _retire(self, process: TemplateProcess) -> None:
        """No more workers from `process`: it is ended once its last worker has exited."""
        if self.current is process:
            self.current = None
        if process.alive:
            self.retired.add(process)
        self._check_idle(process)

    def _check_idle(self, process: TemplateProcess) -> None:
        if process.live or not process.alive:
            return
        if process is not self.current:
            self.retired.discard(process)
            self._spawn(process.close())
        elif process not in self._idle:
            loop = asyncio.get_running_loop()
            self._idle[process] = loop.call_later(TEMPLATE_IDLE_SEC, self._end_idle, process)

    def _end_idle(self, process: TemplateProcess) -> None:
        self._idle.pop(process, None)
        if process is self.current and not process.live:
            self.current = None
            self._spawn(process.close())

    def _lost(self, process: TemplateProcess) -> None:
        """A template process exited: ended by the server, or on its own (then logged)."""
        idle = self._idle.pop(process, None)
        if idle is not None:
            idle.cancel()
        self.retired.discard(process)
        if self.current is process:
            self.current = None

            async def report() -> None:
                status = await SpawnedProcess(process.proc).wait(5.0)
                if process.output is not None:
                    process.output.close()
                logger.error(
                    "template process of %s exited unexpectedly (exit status %s): its worker processes end with it",
                    self.function,
                    status,
                    extra={"function": self.function},
                )

            self._spawn(report())

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """End every template process of the function (and any worker still in them)."""
        for handle in self._idle.values():
            handle.cancel()
        self._idle.clear()
        processes = [p for p in (self.current, *self.retired) if p is not None]
        self.current = None
        self.retired.clear()
        await asyncio.gather(*(p.close() for p in processes))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
