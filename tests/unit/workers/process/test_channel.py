"""The worker channel: length-prefixed frames decoded in order, whatever the reads cut them into."""

from __future__ import annotations

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
