"""The control channel between the supervisor of ``--workers N`` and each serving process.

One Unix stream socket pair per serving process, made by the supervisor; the serving process
gets its end as a descriptor number on its command line. Messages are JSON objects, one per
line, each with a ``type``:

=============  ==========================  ==================================================
type           from                        meaning
=============  ==========================  ==================================================
``ready``      serving process             it accepts connections on the shared socket
``gather``     serving process (``id``,    asks for ``what`` ("metrics", "functions") of every
               ``what``)                   serving process, for a scrape or the dashboard
``collect``    supervisor (``id``,         asks this process for its own ``what``
               ``what``)
``collected``  serving process (``id``,    its answer: ``data``, or ``error``
               ``data`` | ``error``)
``gathered``   supervisor (``id``,         the answer to a ``gather``: one ``data`` entry per
               ``data`` | ``error``)       serving process (and for metrics, the counts of the
                                           serving processes that have exited), or ``error``
``final``      serving process (``what``,  its last metrics, sent once it has shut down
               ``data``)
``alive``      serving process             its event loop runs: sent every HEARTBEAT_SEC (the
                                           supervisor kills a process that stays silent, see
                                           `edgeruntime.serving.supervisor`)
``reload``     supervisor (``changed`` |   config.toml or the env file was edited (``changed``:
               ``functions``, ``report``)  their paths): apply them as they are now; or the
                                           files of functions were (``functions``: their
                                           names, ``_shared`` for shared code; empty: a file
                                           outside any function): reload them. Log the lines
                                           saying what changed or was reloaded only when
                                           ``report`` is true (one serving process per edit is
                                           told so); errors are logged either way
=============  ==========================  ==================================================

JSON, never pickle: each side reads the other's messages as plain data. A serving process reads
the end of its channel (the supervisor gone, even killed) as SIGTERM: no serving process
outlives its supervisor. Neither end is inherited by the processes a serving process starts
(worker processes, what functions run).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

from edgeruntime.exceptions import SiblingsUnavailable

__all__ = ["MAX_MESSAGE_BYTES", "ControlChannel", "decode", "encode"]

logger = logging.getLogger("edgeruntime")

#: The longest message either end reads (a line); a longer one is refused by its sender.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Seconds between two `alive` messages of a serving process (sent by its event loop).
HEARTBEAT_SEC = 1.0
#: How long a serving process waits for the answer to a `gather` (the supervisor waits
#: `supervisor.COLLECT_TIMEOUT_SEC` for each serving process within it).
GATHER_TIMEOUT_SEC = 8.0


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as its line."""
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any] | None:
    """The message of `line`; None when it is not a JSON object with a string `type`."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None
    return message


def inherited_socket(fd: int, *, listening: bool) -> socket.socket:
    """The stream socket of descriptor `fd`, made non-inheritable; ValueError says why it is not one.

    `listening`: it must be a listening TCP socket (else: a connected Unix socket).
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"descriptor {fd} is not a socket ({exc.strerror})") from None
    try:
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"descriptor {fd} is not a stream socket")
        accepting = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        if listening and (not accepting or sock.family not in (socket.AF_INET, socket.AF_INET6)):
            raise ValueError(f"descriptor {fd} is not a listening TCP socket")
        if not listening and (accepting or sock.family != socket.AF_UNIX):
            raise ValueError(f"descriptor {fd} is not a connected Unix socket")
        os.set_inheritable(fd, False)
    except BaseException:
        sock.detach()  # not ours to close: whoever passed the number still owns it
        raise
    return sock


class ControlChannel:
    """A serving process's end of its channel to the supervisor.

    `collectors` answer the supervisor's ``collect``: "what" → a callable returning plain data
    (JSON). :meth:`gather` asks for that data of every serving process. `on_reload(changed,
    report)` applies an edit of the configuration files the supervisor saw (``reload``), and
    `on_functions_edited(names, report)` one of the functions' files.
    """

    def __init__(
        self,
        sock: socket.socket,
        collectors: Mapping[str, Callable[[], Any]] | None = None,
        on_reload: Callable[[list[str], bool], None] | None = None,
        on_functions_edited: Callable[[list[str], bool], None] | None = None,
    ) -> None:
        self.sock = sock
        self.collectors: dict[str, Callable[[], Any]] = dict(collectors or {})
        self.on_reload = on_reload
        self.on_functions_edited = on_functions_edited
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[list[Any]]] = {}
        #: One gather per `what` at a time: concurrent scrapes share it (a client cannot make
        #: every serving process answer once per request it sends).
        self._inflight: dict[str, asyncio.Future[list[Any]]] = {}
        self._ready = False

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the supervisor's messages until the channel ends; then set `stop` (the supervisor
        is gone: this serving process shuts down as on SIGTERM)."""
        reader, self._writer = await asyncio.open_connection(sock=self.sock, limit=MAX_MESSAGE_BYTES)
        self._connected.set()
        if self._ready:
            self._send({"type": "ready"})
        heartbeat = asyncio.get_running_loop().create_task(self._beat(), name="edgeruntime-heartbeat")
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, ConnectionError):  # a line over the limit, or the channel broke
                    break
                if not line:
                    break
                message = decode(line)
                if message is None:
                    logger.error("control channel: a message that is not JSON was ignored")
                    continue
                self._receive(message)
        finally:
            heartbeat.cancel()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(SiblingsUnavailable("the supervisor of the serving processes has gone"))
            self._pending.clear()
            self._writer.close()
        if not stop.is_set():
            logger.warning("the supervisor of the serving processes has gone: shutting down")
            stop.set()

    async def _beat(self) -> None:
        """Say `alive` every HEARTBEAT_SEC: from the event loop, so a blocked loop falls silent."""
        while True:
            await asyncio.sleep(HEARTBEAT_SEC)
            self._send({"type": "alive"})

    def ready(self) -> None:
        """Tell the supervisor this process accepts connections (once)."""
        if self._ready:
            return
        self._ready = True
        if self._connected.is_set():
            self._send({"type": "ready"})

    async def gather(self, what: str) -> list[Any]:
        """`what` of every serving process, this one included, as the supervisor gathers it.

        SiblingsUnavailable when not every one answered (or the supervisor did not) in time.
        """
        running = self._inflight.get(what)
        if running is None:
            running = self._inflight[what] = asyncio.get_running_loop().create_future()
            running.add_done_callback(self._forget(what))
            asyncio.get_running_loop().create_task(self._ask(what, running))
        return await asyncio.shield(running)

    def _forget(self, what: str) -> Callable[[asyncio.Future[list[Any]]], None]:
        def done(future: asyncio.Future[list[Any]]) -> None:
            self._inflight.pop(what, None)
            if not future.cancelled():
                future.exception()  # retrieved: every caller may have gone (their clients left)

        return done

    async def _ask(self, what: str, result: asyncio.Future[list[Any]]) -> None:
        number = next(self._ids)
        answer: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending[number] = answer
        try:
            await asyncio.wait_for(self._connected.wait(), GATHER_TIMEOUT_SEC)
            self._send({"type": "gather", "id": number, "what": what})
            data = await asyncio.wait_for(answer, GATHER_TIMEOUT_SEC)
        except TimeoutError:
            result.set_exception(
                SiblingsUnavailable(f"the serving processes did not answer within {GATHER_TIMEOUT_SEC:g} s")
            )
        except Exception as exc:
            result.set_exception(exc)
        else:
            result.set_result(data)
        finally:
            self._pending.pop(number, None)

    async def send_final(self, what: str, data: Any) -> None:
        """Send this process's last `what` (its metrics once it has shut down), and wait until it is written."""
        if self._writer is None:
            return
        self._send({"type": "final", "what": what, "data": data})
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    # -- internals ---------------------------------------------------------------------------

    def _send(self, message: Mapping[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing():
            return
        line = encode(message)
        if len(line) > MAX_MESSAGE_BYTES:
            line = encode({**{k: v for k, v in message.items() if k != "data"}, "error": "answer too large"})
        self._writer.write(line)

    def _receive(self, message: dict[str, Any]) -> None:
        kind, number = message["type"], message.get("id")
        if kind == "collect" and isinstance(number, int):
            what = message.get("what")
            collector = self.collectors.get(what) if isinstance(what, str) else None
            if collector is None:
                self._send({"type": "collected", "id": number, "error": f"nothing to collect as {what!r}"})
                return
            try:
                data = collector()
            except Exception as exc:
                logger.exception("control channel: collecting %s failed", what)
                self._send({"type": "collected", "id": number, "error": f"collecting {what} failed: {exc}"})
                return
            self._send({"type": "collected", "id": number, "data": data})
        elif kind == "gathered" and isinstance(number, int):
            future = self._pending.get(number)
            if future is None or future.done():
                return  # answered after its timeout
            data, error = message.get("data"), message.get("error")
            if isinstance(data, list) and error is None:
                future.set_result(data)
            else:
                future.set_exception(SiblingsUnavailable(str(error or "a malformed answer")))
        elif kind == "reload" and isinstance(message.get("changed"), list):
            if self.on_reload is not None:
                changed = [path for path in message["changed"] if isinstance(path, str)]
                self.on_reload(changed, message.get("report") is True)
        elif kind == "reload" and isinstance(message.get("functions"), list):
            if self.on_functions_edited is not None:
                names = [name for name in message["functions"] if isinstance(name, str)]
                self.on_functions_edited(names, message.get("report") is True)
        else:
            logger.error("control channel: an unexpected %r message was ignored", kind)
