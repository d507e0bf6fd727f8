"""A function's template: the process its worker processes are forked from.

``python -P -m edgeruntime.workers.process.template FD PARENT NAME [UID:GID]``

The server (:mod:`edgeruntime.workers.process.forking`) starts one template per function that
runs in worker processes, in that function's sandbox, exactly as it would start a worker process
(:mod:`edgeruntime.workers.process.sandbox`): under bubblewrap in the function's own view, as the
function's uid, non-dumpable, tied to the server's life. The template imports what every worker
imports (the runtime and Starlette, :data:`PRELOAD`) and nothing of the function, then waits on
its control socket `FD`. For each request the server sends there, with the new worker's end of
its channel attached (``SCM_RIGHTS``), the template forks: the child keeps that one descriptor
(and stdio: the template's stdout and stderr are pipes the server reads, see
:class:`edgeruntime.workers.process.forking.ProcessOutput`, so what its workers write is logged as
the function's), closes every other, and becomes a worker process (:func:`edgeruntime.workers.process.child.main`),
which announces itself to the server and gets the function's env over its channel, as a worker
process the server starts itself does. A worker thus boots in milliseconds and shares the
template's imported modules' memory until it writes to it.

What the template holds is what every worker of the function starts with: no env of the function
(it gets none: its environment is what Python needs to run), no module of the function or of
``_shared`` (each worker runs the function's module afresh, so a reload needs no new template),
no thread (forking a process with threads is unsafe: a template that finds a second thread
refuses to fork, and the server starts workers without it).

The template hands the server each worker's pidfd with its pid, reaps its children and reports
each one's exit status; it dies with the server, and its workers die with it
(``PR_SET_PDEATHSIG``). Each worker leads a session of its own: what it started and left running
in its process group is killed when the template reaps it. Control messages are fixed-size
records (no pickle) over a ``SOCK_SEQPACKET`` socket: a kind, and two integers (and a worker's
pidfd, ``SCM_RIGHTS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import importlib
import os
import select
import signal
import socket
import sys
import traceback

from edgeruntime.workers.process.forking import (
    EXITED,
    FORK,
    FORKED,
    KILL,
    MESSAGE,
    NOT_FORKED,
    READY,
    THREADS,
)

__all__ = ["PRELOAD", "Template", "main", "thread_count"]

#: What the template imports: the worker process's own code, the runtime's API that function code
#: imports (`edgeruntime`: `serve`, `EdgeRuntime`, `Deno`; `edgeruntime.jobs`, `edgeruntime.cors`)
#: and the Starlette requests and responses handlers use. Imported by name: these are what a
#: function's module will import, not code the template runs. A function's own dependencies are
#: not preloaded: they would run their import-time code before the function's env exists
#: (docs/limits.md, "How worker processes start").
PRELOAD = (
    "edgeruntime.workers.process.child",
    "edgeruntime",
    "edgeruntime.runtime",
    "edgeruntime.core.logs",
    "edgeruntime.jobs",
    "edgeruntime.cors",
    "starlette.requests",
    "starlette.responses",
)


def thread_count() -> int:
    """How many threads this process has (those Python started and any other)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()


class Template:
    """The template's loop: fork a worker process for each request, reap them, report."""

    def __init__(self, control: socket.socket, name: str) -> None:
        self.control = control
        self.name = name
        self.pid = os.getpid()
        #: Each live worker process: its pidfd (readable once it has exited) → its pid.
        self.children: dict[int, int] = {}
        self.poller = select.poll()

    def send(self, kind: int, first: int, second: int) -> None:
        self.control.send(MESSAGE.pack(kind, first, second))

    def serve(self) -> int:
        """Fork, reap and report until the server closes the control socket; then end the workers left."""
        control = self.control.fileno()
        self.poller.register(control, select.POLLIN)
        serving = True
        try:
            self.send(READY, self.pid, len(sys.modules))
            while serving:
                for fd, _ in self.poller.poll():
                    if fd == control:
                        serving = self.take_request()
                    elif fd in self.children:
                        self.reap(fd)
        except OSError:  # the server is gone
            pass
        for pidfd, pid in list(self.children.items()):  # the server has gone or let the template go
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self.reap(pidfd)
        return 0

    def take_request(self) -> bool:
        """Serve one control message; False once the server has closed the socket."""
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MESSAGE.size + 1, 1)
        except ConnectionError:
            return False
        if not data:
            return False
        try:
            if len(data) != MESSAGE.size:
                return True
            kind, first, _ = MESSAGE.unpack(data)
            if kind == KILL and first in self.children.values():
                os.kill(first, signal.SIGKILL)  # not reaped yet: the pid is still that worker's
            elif kind == FORK and fds:
                self.fork(first, fds[0])
        finally:  # the new worker's channel too: only the worker holds its end, so it closes when the worker dies
            for fd in fds:
                os.close(fd)
        return True

    def fork(self, request: int, channel: int) -> None:
        if thread_count() > 1:
            self.send(NOT_FORKED, request, THREADS)
            return
        # What the template wrote and did not flush would be written again by every worker.
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            self.send(NOT_FORKED, request, exc.errno or errno.EAGAIN)
            return
        if pid == 0:
            self.become_worker(channel)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # it could not be watched, so it is not kept
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            self.send(NOT_FORKED, request, exc.errno or errno.EMFILE)
            return
        self.children[pidfd] = pid
        self.poller.register(pidfd, select.POLLIN)
        # The server gets the pidfd too: taken before the worker could be reaped, it is the worker's
        # for good, where the pid may be another process's once this template has reaped it.
        socket.send_fds(self.control, [MESSAGE.pack(FORKED, request, pid)], [pidfd])

    def become_worker(self, channel: int) -> None:
        """In the child: keep the channel and stdio, close the rest, run as a worker process. Never returns."""
        code = 1
        try:
            # A session (and process group) of its own: what the function starts and leaves running
            # is killed with the group when the worker exits (see `reap`).
            os.setsid()
            self.control.detach()  # closed below with the rest: its object must not close a reused number
            os.closerange(3, channel)
            os.closerange(channel + 1, os.sysconf("SC_OPEN_MAX"))
            from edgeruntime.workers.process import child  # preloaded

            args = [str(channel), str(self.pid), self.name]
            sys.argv = [child.__file__, *args]  # as a worker process the server starts has it
            code = child.main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc()
        finally:
            # Never back into the template's loop: os._exit, after what the worker printed.
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        # What the worker started and left running (a subprocess, a fork holding its channel) ends
        # with it: its process group, whose id is still the worker's until it is reaped just after.
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)  # it has exited: this does not wait
        self.send(EXITED, pid, os.waitstatus_to_exitcode(status))


async def _connect_once() -> None:
    """What a worker does first, once, so that what it sets up on first use is set up here."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.create_unix_connection(asyncio.Protocol, sock=ours)
    transport.close()
    theirs.close()
    await asyncio.sleep(0)


def preload() -> None:
    """Import :data:`PRELOAD`, run an event loop once (closed again: no descriptor or thread is
    left), and keep what this made out of the collector's way, so that workers do not copy the
    pages they share with the template just to collect objects that live on."""
    for name in PRELOAD:
        importlib.import_module(name)
    with contextlib.suppress(ImportError):  # the event loop of workers of a server on uvloop
        importlib.import_module("uvloop")
    asyncio.run(_connect_once())
    gc.collect()
    gc.freeze()


def main(argv: list[str] | None = None) -> int:
    """``FD PARENT NAME [UID:GID]``, as a worker process takes them (:func:`edgeruntime.workers.process.child.main`)."""
    from edgeruntime.workers.process import child

    args = sys.argv[1:] if argv is None else argv
    child.enter_sandbox(int(args[1]), args[3] if len(args) > 3 else None)
    preload()
    control = socket.socket(fileno=int(args[0]))
    control.setblocking(True)
    return Template(control, args[2]).serve()


if __name__ == "__main__":
    sys.exit(main())
