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
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Coroutine, Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeruntime.core.descriptors import exhaustion
from edgeruntime.exceptions import BootError, ConfigError, ResourceExhausted, WorkerCrashed

if TYPE_CHECKING:
    from edgeruntime.workers.process.sandbox import WorkerLauncher

__all__ = [
    "EXITED",
    "FORK",
    "FORKED",
    "KILL",
    "MESSAGE",
    "NOT_FORKED",
    "READY",
    "TEMPLATE_IDLE_SEC",
    "THREADS",
    "ForkedProcess",
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


class WorkerProcessHandle(Protocol):
    """A worker process as the server handles it, however it was started."""

    @property
    def pid(self) -> int | None:
        """The pid of the process the server started or, forked, the worker's once announced."""

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

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        #: Watched: done once it has exited and its process group was killed.
        self._exit: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

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

    def __init__(self, function: str, proc: subprocess.Popen[bytes], control: socket.socket, view: Hashable) -> None:
        self.function = function
        self.proc = proc
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
        return await SpawnedProcess(self.proc).wait(timeout)


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
        try:
            argv, cwd = self.launcher.command(name, directory, theirs.fileno(), os.getpid(), tmp_size_mb, template=True)
            # Popen only forks and execs: it does not wait for the child.
            proc = subprocess.Popen(  # noqa: ASYNC220
                argv,
                pass_fds=(theirs.fileno(),),
                env=self.launcher.template_environ(os.environ),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a terminal's Ctrl-C goes to the server alone (see parent.py)
            )
        except ConfigError as exc:  # no uid left for it
            ours.close()
            raise BootError(name, f"function {name}: {exc}") from None
        except OSError as exc:
            ours.close()
            if exhaustion(exc) is not None:
                raise ResourceExhausted(name, f"starting the template process of {name}") from exc
            raise BootError(name, f"function {name}: cannot start its template process: {exc}") from None
        finally:
            theirs.close()
        self.starts += 1
        process = TemplateProcess(name, proc, ours, view)
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
