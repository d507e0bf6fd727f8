"""A TCP proxy on loopback between edgeruntime and Postgres, to stage store outages.

The machine's PostgreSQL is shared and must never be stopped: the proxy stands in for the network
path instead. `cut()` closes its listening socket (new connections are refused) and aborts every
connection through it, as a server going away does; `restore()` listens again on the same port.
`cut_after_commit()` lets the next COMMIT through, swallows the server's answer and then cuts: the
client never learns that its transaction committed.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

__all__ = ["TcpProxy"]

CHUNK = 65536
#: After a trapped COMMIT, the server gets this long to commit before the connections are cut.
COMMIT_GRACE_SEC = 0.3


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target_host:target_port`, on an event loop thread of its own."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._trap_commit = False
        self._swallowing = False

    # -- the test's side (any thread) ------------------------------------------------------

    def start(self) -> int:
        self._thread.start()
        self._call(self._listen())
        return self.port

    def cut(self) -> None:
        """Refuse new connections and abort the open ones."""
        self._call(self._cut())

    def restore(self) -> None:
        """Accept connections again, on the same port."""
        self._call(self._restore())

    def cut_after_commit(self) -> None:
        """Arm the trap: the next client message holding COMMIT reaches the server, its answer
        never reaches the client, and COMMIT_GRACE_SEC later everything is cut (until `restore`)."""
        self._call(self._arm())

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._shut_down())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    # -- the loop's side -------------------------------------------------------------------

    async def _arm(self) -> None:
        self._trap_commit = True

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _shut_down(self) -> None:
        """Cut, then end the connections' tasks: a task left pending when the loop stops is
        reported ("Task was destroyed but it is pending!") whenever it is collected, in the log
        of whichever test runs then."""
        await self._cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _restore(self) -> None:
        self._trap_commit = self._swallowing = False
        if self._server is None:
            await self._listen()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers.update((client_writer, upstream_writer))
        await asyncio.gather(
            self._pump(client_reader, upstream_writer, from_client=True),
            self._pump(upstream_reader, client_writer, from_client=False),
            return_exceptions=True,
        )
        for writer in (client_writer, upstream_writer):
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool) -> None:
        while data := await reader.read(CHUNK):
            if from_client and self._trap_commit and b"COMMIT" in data:
                self._trap_commit = False
                self._swallowing = True
                asyncio.get_running_loop().call_later(COMMIT_GRACE_SEC, lambda: asyncio.ensure_future(self._cut()))
            elif not from_client and self._swallowing:
                continue
            writer.write(data)
            await writer.drain()
        writer.transport.abort()
