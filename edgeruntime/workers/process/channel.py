"""The channel between the server and a worker process: pickled frames over a Unix socket.

Each frame (:mod:`edgeruntime.workers.process.frames`) is a 4-byte big-endian length and its
pickled fields. Between our own two processes pickle is the cheapest encoding of ASGI messages
(no second HTTP parse). Frames sent in one turn of the event loop are written with one system
call. Streamed bodies are flow-controlled: a writer waits (:meth:`Channel.drain`) while the other
end has stopped reading.

The server's end reads with :func:`~edgeruntime.workers.process.frames.decode_worker_frame`
(plain data only: function code in the worker can write anything to the socket) and a limit on a
frame's length. A frame holding a class, or longer than the limit, closes the channel; a frame of
a kind this end does not read is logged and skipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from edgeruntime.core.transport import BatchedTransport, WriteBatch
from edgeruntime.workers.process.frames import Frame, decode, encode

__all__ = ["Channel", "framed"]

logger = logging.getLogger("edgeruntime")

_HEADER = 4
#: Queued frames are written at once when they reach this size (a streamed body), not at the end of the turn.
FLUSH_BYTES = 256 * 1024


def framed(frame: Frame) -> bytes:
    """`frame` as the channel carries it: its length, then its pickled fields."""
    data = encode(frame)
    return len(data).to_bytes(_HEADER, "big") + data


class Channel(asyncio.Protocol):
    """One end of the channel: `send(frame)` to write, `on_frame(frame)` called for each frame read.

    `decode` reads a frame (the server passes :func:`~edgeruntime.workers.process.frames.decode_worker_frame`).
    A frame longer than `max_frame_bytes`, or that `decode` cannot load, is logged and closes the
    channel; one that `decode` finds is no frame of this end (ValueError) is logged and skipped.
    """

    def __init__(
        self,
        on_frame: Callable[[Frame], None],
        on_close: Callable[[], None],
        *,
        decode: Callable[[memoryview], Frame] = decode,
        max_frame_bytes: int | None = None,
        name: str = "worker channel",
    ) -> None:
        self.on_frame = on_frame
        self.on_close = on_close
        self.transport: BatchedTransport | None = None
        self.closed = False
        self._decode = decode
        self._max_frame_bytes = max_frame_bytes
        self._name = name
        self._buffer = bytearray()
        self._writable: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = BatchedTransport(transport, WriteBatch(), FLUSH_BYTES)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        buffer = self._buffer
        buffer += data
        offset = 0
        end = len(buffer)
        view = memoryview(buffer)
        try:
            while end - offset >= _HEADER:
                size = int.from_bytes(view[offset : offset + _HEADER], "big")
                start = offset + _HEADER
                if self._max_frame_bytes is not None and size > self._max_frame_bytes:
                    self._refuse(f"a {size}-byte frame (at most {self._max_frame_bytes})")
                    return
                if end - start < size:
                    break
                try:
                    frame = self._decode(view[start : start + size])
                except ValueError as exc:
                    offset = start + size
                    # Its text only: the exception's traceback holds a view of the buffer, resized below.
                    logger.error("%s: a frame could not be read: %s", self._name, str(exc))
                    continue
                except Exception as exc:
                    self._refuse(f"a frame that cannot be read: {exc}")
                    return
                offset = start + size
                try:
                    self.on_frame(frame)
                except Exception:
                    logger.exception("worker channel: handling a %s frame failed", type(frame).__name__)
        finally:
            view.release()
        if offset and not self.closed:
            del buffer[:offset]

    def _refuse(self, what: str) -> None:
        logger.error("%s: closed: the other end sent %s", self._name, what)
        self.closed = True
        self._buffer = bytearray()
        if self.transport is not None:
            self.transport.abort()

    def send(self, frame: Frame) -> None:
        """Queue `frame`, written at the end of this turn of the event loop (at once past FLUSH_BYTES).

        The frames queued in one turn go out in one write: the other end wakes once for all of them.
        """
        if self.closed or self.transport is None:
            return
        data = encode(frame)
        self.transport.write(len(data).to_bytes(_HEADER, "big"))
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the other end is not reading (back-pressure for streamed bodies)."""
        if self._writable is not None and not self.closed:
            await asyncio.shield(self._writable)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def pause_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # what is queued is written first

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.resume_writing()
        self.on_close()
