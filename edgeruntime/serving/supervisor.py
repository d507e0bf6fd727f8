"""``edgeruntime serve --workers N``: N serving processes behind one listening socket, supervised.

The process ``edgeruntime serve`` starts as becomes the supervisor. It checks everything a single
server checks (config, functions, the jobs store, which it migrates once), binds and listens on
the socket itself (so a port in use or a privileged port is found once, before anything
starts), then starts N serving processes that accept connections from that one socket, each a
whole server: gateway, function workers, limits, jobs scheduler and queue runner.

- A serving process that exits when it was not told to (a crash, SIGKILL, the OOM killer) is
  replaced at once; one that keeps failing before it is ready is retried with a growing delay
  (RESTART_DELAY_SEC up to MAX_RESTART_DELAY_SEC).
- A serving process that hangs is replaced too: each one's event loop says `alive` on its channel
  every second, and one that accepts connections but stays silent for the hang timeout
  (HANG_TIMEOUT_SEC, or ``EDGERUNTIME_HANG_TIMEOUT_SEC``; 0 turns the check off) is killed
  (SIGKILL) and replaced as a crashed one is. A function whose code never awaits (``while
  True: pass`` in an async handler) blocks its serving process's loop so, and no limit can stop
  it inline (see `edgeruntime.core.metering`).
- SIGTERM or SIGINT: the supervisor passes SIGTERM to every serving process, each stops
  accepting (the socket stays open in the others), finishes its in-flight requests and
  ``wait_until`` work up to the graceful-exit timeout and cuts the rest, as a single server does;
  the supervisor waits for all of them, and kills one that takes STOP_MARGIN_SEC longer.
- An edit of config.toml or the env file, or of the functions' files (unless ``--no-watch``):
  the supervisor watches them (one watcher, not one per serving process), logs each changed
  function file, and tells every serving process, which applies the edit or reloads the
  functions as a single server does; one of them (the one serving longest) logs what changed
  or was reloaded, so each line is said once, not once per process. What fails in a serving
  process is logged by that process.
- SIGHUP (a rolling restart, after a deploy): the serving processes are replaced one at a time:
  a new one is started and, once it accepts connections, an old one is stopped as on SIGTERM.
  The socket never closes and some process always accepts, so no connection is refused; new
  processes read config.toml, the env file and the functions afresh. A new one that fails to
  start stops the restart and the running ones keep serving.

The serving processes are new interpreters (``python -m edgeruntime serve ... --serving-process
LISTEN_FD,CONTROL_FD``), handed the listening socket and their control channel as inherited
descriptors: spawned, not forked. A fork copies a process as it is, and this one has threads by
then (the log writer, the SQLite store's thread, asyncio's child watcher) whose locks a child
could inherit held; it has opened the jobs store, whose connections must not be shared; and each
serving process starts its own worker processes and sandboxes (process isolation) and its own
scheduler with its own instance id. ``SO_REUSEPORT`` (a socket per process) was not chosen: the
kernel drops the connections still queued on a socket when its process closes it, so a rolling
restart would refuse some; one shared socket keeps one queue that outlives every serving process.

What each serving process holds, and what is shared: see docs/deployment.md ("One host").
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeruntime.dashboard.metrics import merge_snapshots, valid_snapshot
from edgeruntime.serving.control import MAX_MESSAGE_BYTES, decode, encode

__all__ = ["ServingSupervisor"]

logger = logging.getLogger("edgeruntime")

#: How long the supervisor waits for each serving process to answer a `collect`.
COLLECT_TIMEOUT_SEC = 5.0
#: How long a new serving process may take to accept connections before it counts as failed.
READY_TIMEOUT_SEC = 120.0
#: How long past the graceful-exit timeout a stopping serving process may take before it is killed.
STOP_MARGIN_SEC = 15.0
#: The first delay before a serving process that failed soon after it started is started again.
RESTART_DELAY_SEC = 1.0
#: The longest such delay (doubled at each failure in a row).
MAX_RESTART_DELAY_SEC = 30.0
#: A serving process that served this long before it exited is replaced without delay.
STABLE_SEC = 30.0
#: How long a serving process that accepts connections may stay silent on its channel (its event
#: loop blocked) before it is killed and replaced; the heartbeat comes every second.
HANG_TIMEOUT_SEC = 30.0


class _Departed:
    """Stands for the answer of a serving process that exited meanwhile (its counts are kept apart)."""


DEPARTED = _Departed()


@dataclass(eq=False)
class ServingProcess:
    """The supervisor's handle on one serving process."""

    proc: asyncio.subprocess.Process
    writer: asyncio.StreamWriter
    ready: asyncio.Future[None]
    #: Told to stop (SIGTERM): its exit is no crash.
    stopping: bool = False
    #: When it started accepting connections (time.monotonic()).
    ready_at: float | None = None
    #: Its metrics are in the supervisor's counts of exited processes: never counted again.
    accounted: bool = False
    #: The last metrics it sent (a snapshot, see `edgeruntime.dashboard.metrics`).
    metrics: list[Any] | None = None
    #: When it last sent anything on its channel (time.monotonic()).
    heard_at: float = field(default_factory=time.monotonic)
    #: Killed for staying silent (once).
    hung: bool = False
    collects: dict[int, asyncio.Future[Any]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, message: dict[str, Any]) -> bool:
        if self.writer.is_closing():
            return False
        self.writer.write(encode(message))
        return True

    def signal(self, signum: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)


def describe_exit(status: int) -> str:
    """`status` of a process as words: "exited with status 1", "was killed by SIGKILL"."""
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"was killed by {name}"
    return f"exited with status {status}"


class ServingSupervisor:
    """Runs `count` serving processes of `command` on the listening `sock` (see the module docstring).

    `command` is the serving process's command line without its ``--serving-process`` option;
    `on_ready` is called once all of them accept connections (the banner). An edit of one of the
    `watched` files (config.toml, the env file), or of a file under `functions_dir` (None: not
    watched), is passed on to every serving process.
    """

    def __init__(
        self,
        command: Sequence[str],
        count: int,
        sock: socket.socket,
        *,
        graceful_exit_timeout_sec: float,
        hang_timeout_sec: float = HANG_TIMEOUT_SEC,
        on_ready: Callable[[], None] = lambda: None,
        watched: Sequence[Path] = (),
        functions_dir: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.watched = list(watched)
        self.functions_dir = functions_dir
        self.count = count
        self.sock = sock
        self.graceful_exit_timeout_sec = graceful_exit_timeout_sec
        #: See HANG_TIMEOUT_SEC; 0: never.
        self.hang_timeout_sec = hang_timeout_sec
        #: The clock of the hang check (time.monotonic; a test's own).
        self.monotonic: Callable[[], float] = time.monotonic
        self.on_ready = on_ready
        #: The serving processes that serve, one per slot.
        self.members: list[ServingProcess] = []
        #: Every serving process still running: members, new ones starting, old ones stopping.
        self.running: set[ServingProcess] = set()
        #: The counts of serving processes that have exited, merged (metrics stay monotonic).
        self.departed: list[Any] = []
        self._stop = asyncio.Event()
        self._restart = asyncio.Event()
        self._changing = asyncio.Lock()
        self._delays: dict[int, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)

    # -- running -------------------------------------------------------------------------------

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT; returns the exit status (a serving process's own when
        one fails to start)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._restart.set)
        try:
            # From now: an edit made while they start is passed on too.
            if self.watched:
                self._spawn(self._watch_config())
            if self.functions_dir is not None:
                self._spawn(self._watch_functions())
            status = await self._start_all()
            if status is not None:
                return status
            self.on_ready()
            if self.hang_timeout_sec > 0:
                self._spawn(self._find_hangs())
            while not self._stop.is_set():
                await self._first(self._stop.wait(), self._restart.wait())
                if self._restart.is_set() and not self._stop.is_set():
                    self._restart.clear()
                    await self.rolling_restart()
            return 0
        finally:
            try:
                await self._stop_all()  # a second Ctrl-C meanwhile changes nothing
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)

    async def _start_all(self) -> int | None:
        started = [await self._start() for _ in range(self.count)]
        self.members = started
        for process in started:
            failure = await self._until_ready(process)
            if self._stop.is_set():
                return 0
            if failure is not None:
                logger.error("a serving process %s before it accepted connections", failure)
                status = process.proc.returncode
                return status if status is not None and status > 0 else 1
        return None

    async def _start(self) -> ServingProcess:
        """A new serving process, its channel read and its exit watched."""
        ours, theirs = socket.socketpair()
        try:
            fds = (self.sock.fileno(), theirs.fileno())
            proc = await asyncio.create_subprocess_exec(
                *self.command, "--serving-process", f"{fds[0]},{fds[1]}", pass_fds=fds
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours, limit=MAX_MESSAGE_BYTES)
        process = ServingProcess(proc, writer, asyncio.get_running_loop().create_future())
        self.running.add(process)
        self._spawn(self._read(process, reader))
        self._spawn(self._watch(process))
        return process

    async def _until_ready(self, process: ServingProcess) -> str | None:
        """None once `process` accepts connections (or the supervisor is stopping: callers look);
        else what went wrong (it is then stopped)."""
        await self._first(asyncio.wait({process.ready}, timeout=READY_TIMEOUT_SEC), self._stop.wait())
        if self._stop.is_set():
            return None
        if not process.ready.done():
            process.stopping = True
            process.signal(signal.SIGKILL)
            return f"[{process.pid}] did not accept connections within {READY_TIMEOUT_SEC:g} s and was killed"
        if process.ready.exception() is not None:
            assert process.proc.returncode is not None
            return f"[{process.pid}] {describe_exit(process.proc.returncode)}"
        process.ready_at = time.monotonic()
        return None

    async def _first(self, *waits: Coroutine[Any, Any, Any]) -> None:
        tasks = [asyncio.ensure_future(wait) for wait in waits]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- replacing ---------------------------------------------------------------------------

    async def rolling_restart(self) -> None:
        """Replace the serving processes one at a time (see the module docstring)."""
        logger.info("SIGHUP: replacing the %d serving processes one at a time", len(self.members))
        for slot in range(len(self.members)):
            async with self._changing:
                if self._stop.is_set():
                    return
                old = self.members[slot]
                new = await self._start()
                failure = await self._until_ready(new)
                if self._stop.is_set():
                    return
                if failure is not None:
                    logger.error(
                        "SIGHUP: the new serving process %s; the running ones keep serving (restart stopped)", failure
                    )
                    return
                self.members[slot] = new
                self._retire(old)
                logger.info("serving process [%d] accepts connections; [%d] is stopping", new.pid, old.pid)
        logger.info("SIGHUP: every serving process was replaced")

    def _retire(self, process: ServingProcess) -> None:
        process.stopping = True
        process.signal(signal.SIGTERM)

    async def _replace(self, slot: int, dead: ServingProcess) -> None:
        """Start a serving process in place of `dead`, after the slot's delay when it failed soon."""
        stable = dead.ready_at is not None and time.monotonic() - dead.ready_at >= STABLE_SEC
        delay = 0.0 if stable else self._delays.get(slot, 0.0)
        while not self._stop.is_set():
            if delay:
                logger.info("starting another serving process in %g s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                if self._stop.is_set():
                    return
            self._delays[slot] = min(max(RESTART_DELAY_SEC, delay * 2), MAX_RESTART_DELAY_SEC)
            async with self._changing:
                if self._stop.is_set() or self.members[slot] is not dead:
                    return  # stopping, or a rolling restart replaced it meanwhile
                try:
                    new = await self._start()
                except OSError as exc:
                    failure: str | None = f"could not be started: {exc}"
                else:
                    failure = await self._until_ready(new)
                if failure is None:
                    self.members[slot] = new
                    logger.info("serving process [%d] replaces [%d]", new.pid, dead.pid)
                    return
            if self._stop.is_set():
                return
            logger.error("a new serving process %s", failure)
            delay = self._delays[slot]

    async def _watch(self, process: ServingProcess) -> None:
        status = await process.proc.wait()
        self.running.discard(process)
        self._account(process)
        if not process.ready.done():
            process.ready.set_exception(ChildProcessError(status))
            process.ready.exception()  # retrieved: nobody may wait for it any more
        for future in process.collects.values():
            if not future.done():
                future.set_result(DEPARTED)
        process.writer.close()
        if process.stopping or self._stop.is_set() or process not in self.members or process.ready_at is None:
            return
        logger.error("serving process [%d] %s; starting another", process.pid, describe_exit(status))
        self._spawn(self._replace(self.members.index(process), process))

    async def _find_hangs(self) -> None:
        """Kill every serving process that accepts connections and has been silent for the hang timeout."""
        every = min(1.0, self.hang_timeout_sec / 4)
        checked = self.monotonic()
        while not self._stop.is_set():
            await asyncio.sleep(every)
            now = self.monotonic()
            if now - checked > every + self.hang_timeout_sec / 2:
                # The supervisor itself was held up (stopped, starved): what the processes said
                # meanwhile may not be read yet. Silence counts from now.
                for process in self.members:
                    process.heard_at = max(process.heard_at, now)
            checked = now
            for process in list(self.members):
                silent = now - process.heard_at
                if process.ready_at is None or process.stopping or process.hung or silent < self.hang_timeout_sec:
                    continue
                process.hung = True
                logger.error(
                    "serving process [%d] has said nothing for %.0f s (its event loop is blocked): killing it",
                    process.pid,
                    silent,
                )
                process.signal(signal.SIGKILL)

    # -- edits -------------------------------------------------------------------------------

    async def _watch_config(self) -> None:
        from edgeruntime.serving.config_reload import watch_config  # watchfiles: only when watching

        await watch_config(self.watched, self.pass_edit, self._stop)

    async def _watch_functions(self) -> None:
        from edgeruntime.functions.reload import function_edits  # watchfiles: only when watching

        assert self.functions_dir is not None
        async for names in function_edits(self.functions_dir, self._stop):
            self.pass_function_edit(names)

    def pass_edit(self, changed: set[Path]) -> None:
        """Tell every serving process (but those stopping) that the files `changed` were edited.

        The one that has accepted connections longest reports the edit (logs what changed); the
        others apply it silently. A new one that reads the files after the edit finds nothing
        to apply, which is why one that already serves reports, when there is one.
        """
        self._tell_all({"type": "reload", "changed": sorted(str(path) for path in changed)})

    def pass_function_edit(self, names: set[str]) -> None:
        """Tell every serving process (but those stopping) to reload the functions `names`
        (their files changed; ``_shared``: all), reported as :meth:`pass_edit` says."""
        self._tell_all({"type": "reload", "functions": sorted(names)})

    def _tell_all(self, message: dict[str, Any]) -> None:
        told = [process for process in self.running if not process.stopping]
        if not told:
            return
        reporter = min(told, key=lambda p: (p.ready_at is None, p.ready_at or 0.0, p.pid))
        for process in told:
            process.send({**message, "report": process is reporter})

    # -- stopping ----------------------------------------------------------------------------

    async def _stop_all(self) -> None:
        self._stop.set()
        limit = self.graceful_exit_timeout_sec + STOP_MARGIN_SEC
        # A replacement being started (`_replace`, under the lock) joins `running` only once it
        # runs: it is stopped with the others, not left serving after the supervisor returns.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit), self._changing:
                pass
        everyone = list(self.running)
        for process in everyone:
            process.stopping = True
            process.signal(signal.SIGTERM)
        waits = {asyncio.ensure_future(p.proc.wait()): p for p in everyone}
        if waits:
            _, late = await asyncio.wait(waits, timeout=limit)
            for wait in late:
                process = waits[wait]
                logger.error("serving process [%d] did not stop within %g s: killed", process.pid, limit)
                process.signal(signal.SIGKILL)
            if late:
                await asyncio.wait(late)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- the channel -------------------------------------------------------------------------

    async def _read(self, process: ServingProcess, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ValueError, ConnectionError) as exc:
                logger.error("serving process [%d]: its control channel broke: %s", process.pid, exc)
                return
            if not line:
                return
            process.heard_at = self.monotonic()
            message = decode(line)
            if message is None:
                logger.error("serving process [%d]: a message that is not JSON was ignored", process.pid)
                continue
            kind, number = message["type"], message.get("id")
            if kind == "ready":
                if not process.ready.done():
                    process.ready.set_result(None)
            elif kind == "gather" and isinstance(number, int) and isinstance(message.get("what"), str):
                self._spawn(self._gather(process, number, message["what"]))
            elif kind == "collected" and isinstance(number, int):
                future = process.collects.get(number)
                if future is not None and not future.done():
                    future.set_result(message)
            elif kind == "alive":
                pass  # (heard: see above)
            elif kind == "final" and message.get("what") == "metrics" and valid_snapshot(message.get("data")):
                process.metrics = message["data"]
                self._account(process)
            else:
                logger.error("serving process [%d]: an unexpected %r message was ignored", process.pid, kind)

    def _account(self, process: ServingProcess) -> None:
        """Keep the last counts of `process`, which serves no more, with those of the others gone."""
        if process.accounted:
            return
        process.accounted = True
        if process.metrics:
            self.departed = merge_snapshots([self.departed, process.metrics])

    async def _gather(self, asker: ServingProcess, number: int, what: str) -> None:
        """Answer `asker`'s gather: `what` of every serving process that accepts connections."""
        asked = [p for p in self.running if p.ready_at is not None and not p.accounted]
        answers = await asyncio.gather(*(self._collect(p, what) for p in asked))
        data: list[Any] = []
        silent: list[str] = []
        for process, answer in zip(asked, answers, strict=True):
            if answer is DEPARTED or process.accounted:
                continue  # it exited meanwhile: its counts are in `departed`, read below
            if answer is None or "error" in answer:
                silent.append(f"[{process.pid}]" + (f" ({answer['error']})" if answer else ""))
                continue
            if what == "metrics":
                if not valid_snapshot(answer.get("data")):
                    silent.append(f"[{process.pid}] (malformed metrics)")
                    continue
                process.metrics = answer["data"]
            data.append(answer.get("data"))
        if silent:
            error = f"serving process {', '.join(silent)} did not answer within {COLLECT_TIMEOUT_SEC:g} s"
            asker.send({"type": "gathered", "id": number, "error": error})
            return
        if what == "metrics" and self.departed:
            data.insert(0, self.departed)
        asker.send({"type": "gathered", "id": number, "data": data})

    async def _collect(self, process: ServingProcess, what: str) -> Any:
        """`process`'s answer to a collect (a message), DEPARTED if it exited, None if it did not answer."""
        number = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        process.collects[number] = future
        try:
            if not process.send({"type": "collect", "id": number, "what": what}):
                return DEPARTED if process.accounted else None
            return await asyncio.wait_for(future, COLLECT_TIMEOUT_SEC)
        except TimeoutError:
            return None
        finally:
            process.collects.pop(number, None)
