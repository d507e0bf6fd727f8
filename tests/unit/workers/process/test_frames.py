"""The frames between the server and a worker process: typed, read by name, plain tuples on the wire."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from edgeruntime.core.events import StopReason
from edgeruntime.exceptions import ConfigError
from edgeruntime.limits import Limits
from edgeruntime.workers.process import frames
from edgeruntime.workers.process.frames import (
    Answered,
    BeforeUnload,
    BeforeUnloadDone,
    Body,
    Boot,
    Booted,
    BootExhausted,
    BootFailed,
    Cancel,
    Consumed,
    Delivered,
    Done,
    Ended,
    Enqueue,
    Enqueued,
    Frame,
    Listen,
    Outlived,
    Request,
    Sent,
    TaskDone,
    TaskStarted,
    decode,
    decode_worker_frame,
    encode,
    load_worker_frame,
)

EVERY_KIND: list[Frame] = [
    Boot("hello", "/srv/functions/hello", Limits(wall_clock_limit_sec=5), "per_request", "json", {"A": "1"}),
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
    Enqueued(3, 42, None),
    BootExhausted("loading function hello", 24),
    Enqueue(3, "tracked-job", '{"n":1}', 0.0, None, "key-1"),
    Done(3, None, "KeyError: 'userId'"),
    Delivered(1, 8),
    Consumed(1, 8),
    Listen(1),
    Outlived(),
    Request(
        4,
        {
            "type": "websocket",
            "path": "/chat",
            "subprotocols": ["jwt-x"],
            "extensions": {"websocket.http.response": {}},
        },
        {"type": "websocket.connect"},
        "exec-4",
        "websocket",
    ),
    Sent(4, {"type": "websocket.send", "bytes": b"\x00\xff"}),
    Answered(5, [{"type": "http.response.start", "status": 200}, {"type": "http.response.body", "body": b"hi"}]),
    Answered(6, [{"type": "http.response.start", "status": 500}], "KeyError: 'userId'"),
]
#: What a worker process sends: the frames the server reads from it.
WORKER_SENT = [f for f in EVERY_KIND if type(f) in frames._WORKER_FRAMES]


def test_every_kind_has_its_own_number() -> None:
    numbers = [cls._field_defaults["kind"] for cls, _ in frames.KINDS.values()]
    assert len(frames.KINDS) == len(set(numbers)) == len({type(f) for f in EVERY_KIND}) == 20


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


@pytest.mark.parametrize("frame", WORKER_SENT, ids=lambda f: type(f).__name__)
def test_the_server_reads_what_a_worker_sends_as_the_same_frame(frame: Frame) -> None:
    """What travels inside a worker's frame is plain data: an Ended and a stop reason are rebuilt."""
    back = decode_worker_frame(encode(frame))
    assert type(back) is type(frame)
    assert repr(back) == repr(frame)


def test_the_server_reads_no_server_frame_from_a_worker() -> None:
    boot = Boot("hello", "/srv", Limits(), "per_worker", "text", {})
    with pytest.raises(pickle.UnpicklingError, match="may not hold edgeruntime.limits.Limits"):
        decode_worker_frame(encode(boot))
    with pytest.raises(ValueError, match="not a worker channel frame"):
        decode_worker_frame(encode(Cancel(1)))


def test_worker_frames_hold_plain_data_and_builtin_exceptions_only() -> None:
    frame = ("task_done", 1, "failed", ValueError("boom"), None, {"b": [b"x", 1.5, None, True]})
    loaded = load_worker_frame(pickle.dumps(frame))
    assert loaded[:3] == frame[:3] and loaded[4:] == frame[4:]
    assert type(loaded[3]) is ValueError and loaded[3].args == ("boom",)
    for refused in (os.system, Path("/"), ConfigError("x"), type, StopReason.CPU, Ended("limit")):
        with pytest.raises(pickle.UnpicklingError):
            load_worker_frame(pickle.dumps(("send", 1, refused)))


@pytest.mark.parametrize(
    "fields",
    [
        (12.5, "x", 6),  # Booted with two fields
        ("lots", 6),  # Booted: a baseline that is no number
        ("boot", ["not", "text"], "", 7),  # BootFailed
        ("exit", "x", "", 7),  # BootFailed: no such reason
        ("loading", "24", 14),  # BootExhausted: an errno that is no number
        (1, ("limit",), None, 9),  # Done: ended is not (reason, detail)
        (1, None, {"no": "text"}, 9),  # Done: an error that is not text
        (1, "failed", None, ["cpu"], 11),  # TaskDone: a cut reason that is not text
        ("7", "done", None, None, 11),  # TaskDone: a task id that is no number
        (7, "send_email", ["exec-1"], 10),  # TaskStarted: an execution id that is not text
        (7, b"send_email", "exec-1", 10),  # TaskStarted: a name that is not text
        ((7,), "send_email", "exec-1", 10),  # TaskStarted: a task id that is no number
        ("NoSuchReason", 12),  # BeforeUnloadDone
        (1, "8", 17),  # Consumed: a count that is no number
        (1, 0, 17),  # Consumed: nothing consumed
        (1, 10**9, 17),  # Consumed: more than a window
        ("1", 8, 17),  # Consumed: a request id that is no number
        (["1"], 19),  # Listen: a request id that is no number
        (1, ({"type": "http.response.start"},), None, 18),  # Answered: messages not in a list
        (1, ["http.response.start"], None, 18),  # Answered: a message that is no dict
        (1, [{"type": "http.response.start"}, b"body"], None, 18),  # Answered: the second message is no dict
        (1, [{"type": "http.response.start"}], None, None, 18),  # Answered with a field too many
        (1, [], b"error", 18),  # Answered: an error that is not text
    ],
)
def test_a_worker_frame_with_fields_of_the_wrong_type_is_no_frame(fields: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        decode_worker_frame(pickle.dumps(fields))


def test_a_worker_cannot_hand_the_server_an_exception_that_would_stop_it() -> None:
    frame = decode_worker_frame(pickle.dumps((7, "failed", SystemExit(3), None, 11)))
    assert isinstance(frame, TaskDone)
    assert type(frame.error) is RuntimeError and str(frame.error) == "SystemExit: 3"


def test_the_server_reads_no_delivered_frame_from_a_worker() -> None:
    """Delivered is the server's acknowledgement: a worker that sends one sends no frame of its kind."""
    with pytest.raises(ValueError, match="not a worker channel frame"):
        decode_worker_frame(encode(Delivered(1, 8)))
