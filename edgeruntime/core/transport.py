"""Writes batched per iteration of the event loop: one system call per connection, one wake-up per reader.

Used by the server's event loop for every connection it accepts (see `batched_writes`) and by the
channel to worker processes (frames).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any, cast

__all__ = ["WRITE_THROUGH_BYTES", "BatchedTransport", "WriteBatch", "batched_writes"]

logger = logging.getLogger("edgeruntime")

#: Buffered bytes at which a connection's writes go out at once (keeps the transport's flow control).
WRITE_THROUGH_BYTES = 64 * 1024


class WriteBatch:
    """The connections with buffered writes, flushed together once per event-loop iteration."""

    def __init__(self) -> None:
        self.pending: list[BatchedTransport] = []

    def add(self, transport: BatchedTransport) -> None:
        """Flush `transport` with the others at the end of this iteration of the running loop."""
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(transport)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for transport in pending:
            try:
                transport.flush()
            except Exception:  # one broken connection must not hold back the others' responses
                logger.exception("writing to a connection failed")


class BatchedTransport(asyncio.Transport):
    """A transport whose writes are buffered until the end of the event loop's iteration.

    Under load one iteration serves many requests. Written one by one, each response reaches
    its client (or proxy) as it is made, and the client wakes up once per response: on a
    virtual machine waking the other CPU costs the server several microseconds per response, a
    fifth of what uvicorn and Starlette spend on a small one. Written together at the end of the
    iteration (each connection's status line, headers and body in one system call), most
    responses find their reader awake. Large bodies are written at once, so the transport's flow
    control still holds back a fast writer; everything else is the wrapped transport's.
    """

    __slots__ = ("_batch", "_chunks", "_size", "_transport", "write_through")

    def __init__(
        self, transport: asyncio.BaseTransport, batch: WriteBatch, write_through: int = WRITE_THROUGH_BYTES
    ) -> None:
        super().__init__()
        # A stream transport (uvloop's do not subclass asyncio.Transport, so no isinstance check).
        self._transport = cast(asyncio.Transport, transport)
        self._batch = batch
        #: Buffered bytes at which the writes go out at once.
        self.write_through = write_through
        self._chunks: list[bytes] = []
        self._size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        chunks = self._chunks
        if not chunks:
            self._batch.add(self)
        chunks.append(data if type(data) is bytes else bytes(data))
        size = self._size = self._size + len(data)
        if size >= self.write_through:
            self.flush()

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in lines:
            self.write(data)

    def flush(self) -> None:
        """Write what is buffered now (dropped if the connection is closing)."""
        chunks = self._chunks
        if not chunks:
            return
        self._chunks = []
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._chunks = []
        self._size = 0
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._size

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()


def batched_writes(protocol_factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
    """`protocol_factory` for `loop.create_server`, its connections writing through BatchedTransport.

    The connections of one server share one WriteBatch. Once connected, the transport talks to
    the server's own protocol directly: nothing is added on the read path.
    """
    batch = WriteBatch()

    def factory() -> asyncio.BaseProtocol:
        return _Connecting(protocol_factory(), batch)

    return factory


class _Connecting(asyncio.Protocol):
    """Hands the server's protocol a BatchedTransport, then steps out of the way."""

    def __init__(self, protocol: asyncio.BaseProtocol, batch: WriteBatch) -> None:
        self.protocol = protocol
        self.batch = batch

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.set_protocol(self.protocol)
        self.protocol.connection_made(BatchedTransport(transport, self.batch))
