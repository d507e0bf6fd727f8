"""The channel between the server and a worker process: batches of pickled frames over a Unix socket.

What one side sends in one turn of its event loop travels as one batch: a 4-byte big-endian
length and the pickled list of the frames' plain tuples (:mod:`edgeruntime.workers.process.frames`),
written with one system call. Under load one turn serves many requests, so the batch is pickled
once and read once for all of them, and the other side wakes once. Between our own two processes
pickle is the cheapest encoding of ASGI messages (no second HTTP parse). A batch holding a body
of :data:`FLUSH_BYTES` or more is written at once. Streamed bodies are flow-controlled: a writer
waits (:meth:`Channel.drain`) while the other end has stopped reading.

The server's end reads with :data:`~edgeruntime.workers.process.frames.FROM_WORKER` (plain data
only: function code in the worker can write anything to the socket) and a limit on a batch's
length. A batch holding a class, or longer than the limit, closes the channel; a frame of a kind
this end does not read is logged and skipped. The side reading may close the channel itself for
what a frame says (:meth:`Channel.refuse`): the rest of its batch is then not read.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
from collections.abc import Callable
from typing import Any, cast

from edgeruntime.workers.process.frames import FROM_SERVER, Frame, Reader, encode_batch, payload_bytes, to_wire

__all__ = ["FLUSH_BYTES", "Channel", "framed"]

logger = logging.getLogger("edgeruntime")

_HEADER = 4
#: Queued frames are written at once when their bodies reach this size (a streamed body), not at the end of the turn.
FLUSH_BYTES = 256 * 1024
#: A batch this long is written in two parts (its length, then itself) rather than copied behind its length.
_COPY_BYTES = 64 * 1024


def framed(*frames: Frame) -> bytes:
    """`frames` as the channel carries them: a batch's length, then the batch."""
    data = encode_batch([to_wire(frame) for frame in frames])
    return len(data).to_bytes(_HEADER, "big") + data


class Channel(asyncio.Protocol):
    """One end of the channel: `send(frame)` to write, `on_frame(frame)` called for each frame read.

    `reader` says how to read the other end's batches (the server passes
    :data:`~edgeruntime.workers.process.frames.FROM_WORKER`). A batch longer than `max_frame_bytes`,
    or that `reader` cannot load, is logged and closes the channel; a frame in it that `reader`
    finds is no frame of this end (ValueError) is logged and skipped. `on_unsent(fields, error)`
    is told of a frame that could not be pickled (its plain tuple): the frame it returns, if any,
    is sent in its place, and the others of its batch are sent. `before_flush()` is called before
    each batch is made: what it sends goes in the batch (a side that held frames back, see
    :meth:`hold`).

    With `late` (the server's end) a turn's frames are written at the end of the next turn: after
    what the rest of the turn writes at its end, the responses to the server's clients among them
    (:mod:`edgeruntime.core.transport`). The worker process, woken by the batch, runs on the core
    the server runs on, and it runs at once: written first, the batch held those responses back
    until the worker process had served all of it, while the clients had nothing to send. It also
    gathers the requests of two turns in one batch.
    """

    def __init__(
        self,
        on_frame: Callable[[Frame], None],
        on_close: Callable[[], None],
        *,
        reader: Reader = FROM_SERVER,
        max_frame_bytes: int | None = None,
        name: str = "worker channel",
        on_unsent: Callable[[tuple[Any, ...], Exception], Frame | None] | None = None,
        before_flush: Callable[[], None] | None = None,
        late: bool = False,
    ) -> None:
        self.on_frame = on_frame
        self.on_close = on_close
        self.on_unsent = on_unsent
        self.before_flush = before_flush
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._load = reader.load
        self._read = reader.frame
        self._max_frame_bytes = max_frame_bytes
        self._name = name
        self._buffer = bytearray()
        self._writable: asyncio.Future[None] | None = None
        #: The plain tuples of the frames sent in this turn, and the body bytes they carry.
        self._queued: list[tuple[Any, ...]] = []
        self._queued_bytes = 0
        #: A flush is due at the end of this turn of the event loop (or of the next one, `late`).
        self._due = False
        self._late = late
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, so no isinstance check).
        self.transport = cast(asyncio.Transport, transport)
        # Its loop, found once: `asyncio.get_running_loop()` is a system call on Python 3.11.
        self._loop = asyncio._get_running_loop()

    # -- reading ---------------------------------------------------------------------------

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
                    self.refuse(f"a {size}-byte batch (at most {self._max_frame_bytes})")
                    return
                if end - start < size:
                    break
                try:
                    batch = self._load(view[start : start + size])
                except Exception as exc:
                    self.refuse(f"a batch that cannot be read: {exc}")
                    return
                offset = start + size
                if not self._deliver(batch):
                    return
        finally:
            view.release()
        if offset and not self.closed:
            # What is left goes to a new buffer, rather than `del buffer[:offset]`: a view of
            # this one that outlives the call (a frame of the loader kept by a traceback until
            # the collector runs) forbids resizing it ("BufferError: Existing exports").
            self._buffer = buffer[offset:]

    def _deliver(self, batch: Any) -> bool:
        """Hand each frame of `batch` to `on_frame`; False once the channel is refused."""
        if type(batch) is not list:
            logger.error("%s: a batch could not be read: not a list of frames: %s", self._name, f"{batch!r:.80}")
            return True
        read = self._read
        on_frame = self.on_frame
        for fields in batch:
            try:
                frame = read(fields)
            except ValueError as exc:
                logger.error("%s: a frame could not be read: %s", self._name, exc)
                continue
            except Exception as exc:
                self.refuse(f"a frame that cannot be read: {exc}")
                return False
            try:
                on_frame(frame)
            except Exception:
                logger.exception("worker channel: handling a %s frame failed", type(frame).__name__)
            if self.closed:  # `on_frame` refused it (see `refuse`): the rest of the batch is not read
                return False
        return True

    def refuse(self, what: str) -> None:
        """Close the channel because the other end sent `what` (logged)."""
        logger.error("%s: closed: the other end sent %s", self._name, what)
        self.closed = True
        self._buffer = bytearray()
        self._queued = []
        if self.transport is not None:
            self.transport.abort()

    # -- writing ---------------------------------------------------------------------------

    def send(self, frame: Frame) -> None:
        """Queue `frame`, written with the others of this turn of the event loop at its end (at
        once when their bodies reach FLUSH_BYTES): the other end wakes once for all of them."""
        self.queue(to_wire(frame), payload_bytes(frame))

    def queue(self, fields: tuple[Any, ...], size: int = 0) -> None:
        """What :meth:`send` does with a frame, given its plain tuple (see
        :func:`~edgeruntime.workers.process.frames.to_wire`) and the `size` of the body it carries:
        for the request path, which makes the tuples of its frames itself."""
        if self.closed or self.transport is None:
            return
        if not self._due:
            self.hold()
        self._queued.append(fields)
        if size:
            self._queued_bytes += size
            if self._queued_bytes >= FLUSH_BYTES:
                self.flush()

    def hold(self) -> None:
        """Flush at the end of this turn of the event loop even if nothing is sent until then:
        a side that holds frames back to send them together sends them from `before_flush`."""
        if not self._due:
            self._due = True
            loop = self._loop or asyncio.get_running_loop()
            if self._late:  # at the end of the next turn: after the rest of this one's writes
                loop.call_soon(loop.call_soon, self._end_of_turn)
            else:
                loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        try:
            self.flush()
        finally:
            self._due = False

    def flush(self) -> None:
        """Write the frames queued so far, as one batch."""
        if self.before_flush is not None:
            self.before_flush()
        queued = self._queued
        if not queued:
            return
        self._queued = []
        self._queued_bytes = 0
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        try:
            data = encode_batch(queued)
        except Exception:  # something in one frame cannot be pickled: the others still go
            kept = self._encodable(queued)
            if not kept:
                return
            data = encode_batch(kept)
        header = len(data).to_bytes(_HEADER, "big")
        if len(data) < _COPY_BYTES:
            transport.write(header + data)
        else:
            transport.writelines((header, data))

    def _encodable(self, queued: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        kept = []
        for fields in queued:
            try:
                pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                logger.error("%s: a frame could not be sent: %s", self._name, exc)
                instead = None if self.on_unsent is None else self.on_unsent(fields, exc)
                if instead is not None:
                    kept.append(to_wire(instead))
                continue
            kept.append(fields)
        return kept

    @property
    def writing_paused(self) -> bool:
        """The other end is not reading: :meth:`drain` would wait."""
        return self._writable is not None and not self.closed

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
            self.flush()  # what is queued is written first
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._queued = []
        self.resume_writing()
        self.on_close()
