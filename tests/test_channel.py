"""The worker channel: length-prefixed pickled frames, coalesced writes, flow control."""

from __future__ import annotations

import asyncio
import socket

from edgeruntime.core.events import StopReason
from edgeruntime.workers.process.channel import FLUSH_BYTES, Channel
from edgeruntime.workers.process.frames import (
    BeforeUnload,
    Body,
    Cancel,
    Done,
    Frame,
    Sent,
    TaskStarted,
    encode as pickled,
)


def encode(frame: Frame) -> bytes:
    data = pickled(frame)
    return len(data).to_bytes(4, "big") + data


def test_frames_split_and_joined_arbitrarily_are_decoded_in_order() -> None:
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None)
    frames: list[Frame] = [
        Sent(1, {"type": "http.response.start", "status": 200}),
        Done(1, None),
        TaskStarted(7, "x", "e"),
    ]
    stream = b"".join(encode(f) for f in frames)
    for i in range(len(stream)):  # one byte at a time
        channel.data_received(stream[i : i + 1])
    channel.data_received(stream)  # all at once
    assert seen == frames + frames


def test_a_failing_frame_handler_does_not_stop_the_others() -> None:
    seen: list[Frame] = []

    def handle(frame: Frame) -> None:
        if isinstance(frame, Cancel):
            raise ValueError("bad frame")
        seen.append(frame)

    channel = Channel(handle, lambda: None)
    channel.data_received(encode(Cancel(1)) + encode(Done(1, None)))
    assert seen == [Done(1, None)]


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
