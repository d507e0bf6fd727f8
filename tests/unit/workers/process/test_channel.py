"""The worker channel: length-prefixed frames decoded in order, whatever the reads cut them into."""

from __future__ import annotations

import asyncio
import logging
import pickle

import pytest

from edgeruntime.workers.process.channel import Channel
from edgeruntime.workers.process.frames import (
    Cancel,
    Done,
    Frame,
    Sent,
    TaskStarted,
    decode_worker_frame,
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


def test_an_unreadable_frame_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None)
    unknown = pickle.dumps(("from", "elsewhere", 99))
    channel.data_received(len(unknown).to_bytes(4, "big") + unknown + encode(Done(1, None)))
    assert seen == [Done(1, None)]
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert logged.startswith("worker channel: a frame could not be read: not a worker channel frame")


class _Transport(asyncio.Transport):
    """Records what the channel does to its transport."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


class _Evil:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("ran in the server",))


def test_the_server_end_closes_on_a_frame_that_holds_a_class(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """What function code in a worker writes is loaded as plain data: a class closes the channel."""
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None, decode=decode_worker_frame, name="worker channel of evil")
    transport = _Transport()
    channel.connection_made(transport)
    evil = pickle.dumps((1, _Evil(), 8))
    channel.data_received(encode(Done(1, None)) + len(evil).to_bytes(4, "big") + evil + encode(Done(2, None)))
    assert seen == [Done(1, None)]  # nothing after the refused frame
    assert transport.aborted and channel.closed
    assert "ran in the server" not in capsys.readouterr().out
    refused = "worker channel of evil: closed: the other end sent a frame that cannot be read"
    assert f"{refused}: a worker frame may not hold builtins.print" in caplog.text
    channel.data_received(encode(Done(3, None)))
    assert seen == [Done(1, None)]


def test_the_server_end_closes_on_a_frame_longer_than_it_allows(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Frame] = []
    channel = Channel(seen.append, lambda: None, decode=decode_worker_frame, max_frame_bytes=1024)
    transport = _Transport()
    channel.connection_made(transport)
    channel.data_received((2**32 - 1).to_bytes(4, "big") + b"x" * 10)  # not buffered up to 4 GB
    assert transport.aborted and seen == []
    assert "the other end sent a 4294967295-byte frame (at most 1024)" in caplog.text
