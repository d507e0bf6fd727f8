"""The frames between the server and a worker process: typed, read by name, plain tuples on the wire."""

from __future__ import annotations

import pickle

import pytest

from edgeruntime.core.events import StopReason
from edgeruntime.limits import Limits
from edgeruntime.workers.process import frames
from edgeruntime.workers.process.frames import (
    BeforeUnload,
    BeforeUnloadDone,
    Body,
    Boot,
    Booted,
    BootFailed,
    Cancel,
    Done,
    Ended,
    Frame,
    Request,
    Sent,
    TaskDone,
    TaskStarted,
    decode,
    encode,
)

EVERY_KIND: list[Frame] = [
    Boot("hello", "/srv/functions/hello", Limits(wall_clock_limit_sec=5), "per_request", "json"),
    Request(1, {"type": "http", "path": "/hello"}, {"type": "http.request", "body": b"{}"}, "exec-1", "cron"),
    Body(1, {"type": "http.request", "body": b"more", "more_body": True}),
    Cancel(1),
    BeforeUnload(StopReason.WALL_CLOCK),
    Booted(12.5),
    BootFailed("crash", "function hello raised while loading: ValueError: x", "Traceback ..."),
    Sent(1, {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}),
    Done(1, None),
    Done(2, Ended("limit", "CPUTime")),
    TaskStarted(7, "send_email", "exec-1"),
    TaskDone(7, "failed", ValueError("smtp down"), None),
    BeforeUnloadDone(StopReason.EARLY_DROP),
]


def test_every_kind_has_its_own_number() -> None:
    numbers = [cls._field_defaults["kind"] for cls, _ in frames.KINDS.values()]
    assert len(frames.KINDS) == len(set(numbers)) == len({type(f) for f in EVERY_KIND}) == 12


@pytest.mark.parametrize("frame", EVERY_KIND, ids=lambda f: type(f).__name__)
def test_a_frame_comes_back_as_the_same_frame_of_the_same_class(frame: Frame) -> None:
    back = decode(encode(frame))
    assert type(back) is type(frame)
    assert repr(back) == repr(frame)  # repr: an exception compares by identity


def test_fields_are_read_by_name() -> None:
    frame = decode(encode(Request(3, {"path": "/x"}, {"type": "http.request"}, "exec-3", "queue")))
    assert isinstance(frame, Request)
    assert (frame.rid, frame.scope["path"], frame.execution_id, frame.trigger) == (3, "/x", "exec-3", "queue")


def test_the_request_path_frames_travel_as_plain_tuples() -> None:
    """Pickling a named tuple stores its class (and costs three times as much): the wire has none."""
    for frame in (Request(1, {}, {}, "e", "http"), Sent(1, {"type": "http.response.body"}), Done(1, None)):
        data = encode(frame)
        assert b"edgeruntime" not in data
        assert type(pickle.loads(data)) is tuple


@pytest.mark.parametrize(
    ("fields", "message"),
    [((1, 2, 99), "not a worker channel frame"), ((), "not a worker channel frame"), ((1, 2, 4), "Cancel frame has 2")],
)
def test_what_is_not_a_frame_is_refused(fields: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode(pickle.dumps(fields))
