"""The worker channel over a real Unix socket pair: coalesced writes, large bodies written at once."""

from __future__ import annotations

import asyncio
import pickle
import socket

from edgeruntime.core.events import StopReason
from edgeruntime.limits import Limits
from edgeruntime.workers.process.channel import FLUSH_BYTES, Channel, framed
from edgeruntime.workers.process.child import first_batch
from edgeruntime.workers.process.frames import BeforeUnload, Body, Boot, Cancel, Frame, Reader, read_frame


async def test_frames_sent_in_one_turn_go_out_in_one_write_and_arrive() -> None:
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    received: list[Frame] = []
    arrived = asyncio.Event()

    def on_frame(frame: Frame) -> None:
        received.append(frame)
        if isinstance(frame, BeforeUnload):
            arrived.set()

    writer = Channel(lambda f: None, lambda: None)
    reader = Channel(on_frame, lambda: None)
    transport, _ = await loop.create_unix_connection(lambda: writer, sock=ours)
    await loop.create_unix_connection(lambda: reader, sock=theirs)
    writes: list[int] = []
    original = transport.write

    def counting_write(data: bytes | bytearray | memoryview) -> None:
        writes.append(len(data))
        original(data)

    transport.write = counting_write  # type: ignore[method-assign]
    for i in range(10):
        writer.send(Cancel(i))
    writer.send(BeforeUnload(StopReason.TERMINATION))
    await asyncio.wait_for(arrived.wait(), timeout=5)
    expected: list[Frame] = [Cancel(i) for i in range(10)]
    assert received == [*expected, BeforeUnload(StopReason.TERMINATION)]
    assert len(writes) == 1
    # A large body is written at once rather than queued until the end of the turn.
    writer.send(Body(1, {"type": "http.request", "body": b"x" * FLUSH_BYTES}))
    assert len(writes) == 2
    writer.close()
    reader.close()


def test_the_boot_frame_is_read_alone_before_the_loop_starts() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        first = framed(Boot("hello", "/srv/functions/hello", Limits(), "per_worker", "text", {}, "uvloop"))
        later = framed(Cancel(1))
        ours.sendall(first[:3])  # the server wrote the rest later (an env larger than the socket's buffer)
        ours.sendall(first[3:] + later)
        assert first_batch(theirs.fileno()) == first
        assert theirs.recv(len(later)) == later  # what came after stays for the channel
        ours.close()
        assert first_batch(theirs.fileno()) is None  # the server closed the channel first


def test_a_view_of_the_read_buffer_that_outlives_the_read_does_not_break_the_next_one() -> None:
    """The loader's view of a batch may outlive the read (its frame kept by a traceback until
    the collector runs): the channel must not resize that buffer (BufferError), and reads on."""
    kept: list[memoryview] = []

    def keeping_load(data: bytes | memoryview) -> object:
        if isinstance(data, memoryview):
            kept.append(data)  # what a frame of the loader, kept alive, holds
        return pickle.loads(data)

    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None, reader=Reader(keeping_load, read_frame))
    data = framed(Cancel(1)) + framed(Cancel(2))
    channel.data_received(data[:-3])  # a whole batch and part of the next
    channel.data_received(data[-3:])
    channel.data_received(framed(Cancel(3)))
    assert seen == [Cancel(1), Cancel(2), Cancel(3)]
    assert kept
