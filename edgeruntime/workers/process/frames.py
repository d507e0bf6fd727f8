"""The frames between the server and a worker process, one named tuple per kind, read by name.

A frame travels as the plain tuple of its fields, its kind's number last (each class's default
for ``kind``, see :func:`to_wire`): pickling a plain tuple costs a third of pickling a named
tuple, which pickle stores with a reference to its class. The frames a side sends in one turn
of its event loop travel together, the list of their tuples pickled once (:func:`encode_batch`;
the channel, :mod:`edgeruntime.workers.process.channel`, frames the batches), and a
:class:`Reader` turns each tuple back into its class.

Server → worker process: :class:`Boot`, :class:`Request`, :class:`Body`, :class:`Cancel`,
:class:`BeforeUnload`, :class:`Enqueued`, :class:`Delivered`. Worker process → server:
:class:`Booted`, :class:`BootFailed`, :class:`BootExhausted`, :class:`Sent`, :class:`Done`,
:class:`Answered`, :class:`TaskStarted`, :class:`TaskDone`, :class:`BeforeUnloadDone`, :class:`Enqueue`,
:class:`Consumed`, :class:`Listen`, :class:`Outlived`.

The messages of one request flow in both directions under a window of :data:`WINDOW` messages
(a WebSocket's frames, a streamed body): a side sends the next message only while fewer than
that many it sent are unacknowledged, and the other side acknowledges them in batches as they
are used (:class:`Consumed`: the function read them; :class:`Delivered`: the server handed them
to the client). A slow reader at either end holds the writer back, and neither process buffers
more than a window of one request's messages.

The worker runs function code, which can write anything to its end of the socket, so the server
reads worker batches with :data:`FROM_WORKER`: plain data (tuples, dicts, lists, strings,
bytes, numbers) and built-in exceptions only (:func:`load_worker_frame`), never another class,
whose loading could run code in the server; and only the kinds a worker sends. What a worker
sends inside a frame is therefore plain too: an :class:`Ended` and a stop reason travel as a
tuple and a string and are rebuilt on arrival.
"""

from __future__ import annotations

import builtins
import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

from edgeruntime.core.events import StopReason
from edgeruntime.core.types import Message, Scope
from edgeruntime.limits import Limits, Policy

__all__ = [
    "ACK_BATCH",
    "Answered",
    "BeforeUnload",
    "BeforeUnloadDone",
    "Body",
    "Boot",
    "BootExhausted",
    "BootFailed",
    "Booted",
    "Cancel",
    "Consumed",
    "Delivered",
    "Done",
    "Ended",
    "Enqueue",
    "Enqueued",
    "FROM_SERVER",
    "FROM_WORKER",
    "Frame",
    "Listen",
    "Outlived",
    "Reader",
    "Request",
    "Sent",
    "TaskDone",
    "TaskStarted",
    "WINDOW",
    "decode",
    "decode_worker_frame",
    "encode",
    "encode_batch",
    "kind_of",
    "load_worker_frame",
    "payload_bytes",
    "read_frame",
    "read_worker_frame",
    "to_wire",
]


#: Messages of one request a side may send before the other acknowledges them (see the docstring).
WINDOW = 16
#: A side acknowledges the messages it used in batches of this many (and no fewer: half the window,
#: so the writer always has room for a batch while the acknowledgement travels).
ACK_BATCH = WINDOW // 2

# -- server → worker process ------------------------------------------------------------------


class Boot(NamedTuple):
    """Load the function in `directory` (the first frame a worker process gets) with `env` as its
    env: it comes over the channel, not through ``exec``, so the process's environ holds no secret."""

    name: str
    directory: str
    limits: Limits
    policy: Policy
    log_format: str
    env: dict[str, str]
    #: The event loop to run: "uvloop" where the server runs on uvloop (Uvicorn), else "asyncio".
    event_loop: str = "asyncio"
    kind: int = 1


class Request(NamedTuple):
    """Serve request `rid`: its scope (the keys a function can use) and its first body message."""

    rid: int
    scope: Scope
    first: Message
    execution_id: str
    trigger: str
    kind: int = 2


class Body(NamedTuple):
    """The next ASGI message of request `rid`'s body (a streamed body)."""

    rid: int
    message: Message
    kind: int = 3


class Cancel(NamedTuple):
    """Cancel request `rid` (its client went away, or the server cancelled it)."""

    rid: int
    kind: int = 4


class BeforeUnload(NamedTuple):
    """Dispatch `beforeunload` for `reason` to the function's listeners."""

    reason: StopReason
    kind: int = 5


class Enqueued(NamedTuple):
    """The server's answer to :class:`Enqueue` `qid`: the job's id, or why it was not queued."""

    qid: int
    job_id: int | None
    error: str | None
    kind: int = 13


class Delivered(NamedTuple):
    """The server handed `messages` more of request `rid`'s :class:`Sent` messages to its client."""

    rid: int
    messages: int
    kind: int = 16


# -- worker process → server ------------------------------------------------------------------


class Booted(NamedTuple):
    """The function loaded; `baseline_mb` is the process's resident memory before it did."""

    baseline_mb: float
    kind: int = 6


class BootFailed(NamedTuple):
    """The function did not load: `reason` "boot" (503 BOOT_ERROR) or "crash" (500 WORKER_ERROR)."""

    reason: Literal["boot", "crash"]
    message: str
    #: The traceback of the cause, for the server's log.
    detail: str
    kind: int = 7


class BootExhausted(NamedTuple):
    """The function did not load because the worker process ran out of file descriptors (503
    RESOURCE_EXHAUSTED, not the function's fault): what failed, and the errno."""

    action: str
    errno: int
    kind: int = 14


class Sent(NamedTuple):
    """An ASGI message the function sent for request `rid` (its response start, a body chunk)."""

    rid: int
    message: Message
    kind: int = 8


class Ended(NamedTuple):
    """How a forwarded request ended when it did not end with its response sent."""

    #: limit: a limit ended it (`detail` its reason); crashed: the worker process died (`detail`
    #: its exit status); too_large: its body was over the limit; error: the worker failed it
    #: (`detail` says how); cancelled: the server cancelled it.
    reason: Literal["limit", "crashed", "too_large", "error", "cancelled"]
    detail: str | int | None = None


class Done(NamedTuple):
    """Request `rid` is over: `ended` None when the function answered it; `error` what the
    handler raised when it answered with a 500 or 502 (for the run record)."""

    rid: int
    ended: Ended | None
    error: str | None = None
    kind: int = 9


class Answered(NamedTuple):
    """Request `rid` is over, answered with `messages` (its response's start and whole body): what
    a :class:`Sent` of each and a :class:`Done` without `ended` say, in one frame (a small response
    made in one turn of the worker's event loop). `error` as in :class:`Done`."""

    rid: int
    messages: list[Message]
    error: str | None = None
    kind: int = 18


class TaskStarted(NamedTuple):
    """A `wait_until` task started in the worker process."""

    tid: int
    name: str
    execution_id: str
    kind: int = 10


class TaskDone(NamedTuple):
    """A `wait_until` task ended: its outcome, its error (a built-in exception) and why it was cut."""

    tid: int
    outcome: str
    error: BaseException | None
    cut_reason: str | None
    kind: int = 11


class BeforeUnloadDone(NamedTuple):
    """The `beforeunload` listeners for `reason` have run."""

    reason: StopReason
    kind: int = 12


class Enqueue(NamedTuple):
    """The function called ``edgeruntime.jobs.enqueue``: the server, which holds the jobs store,
    queues the job and answers with :class:`Enqueued` `qid`. `body` is the payload as JSON."""

    qid: int
    function: str
    body: str
    delay: float
    max_attempts: int | None
    idempotency_key: str | None
    kind: int = 15


class Consumed(NamedTuple):
    """The function read `messages` more of request `rid`'s :class:`Body` messages."""

    rid: int
    messages: int
    kind: int = 17


class Listen(NamedTuple):
    """The function of request `rid` reads past the message its request came with (it waits for
    the rest of its body, or asks whether the client is still there): the server forwards what the
    client sends next, its leaving included. (A body sent in parts, and a WebSocket's messages,
    are forwarded without it.)"""

    rid: int
    kind: int = 19


class Outlived(NamedTuple):
    """A sync handler of the worker process runs on in its thread after its request ended (a
    thread cannot be stopped): sent once; the server retires the worker."""

    kind: int = 20


Frame: TypeAlias = (
    Boot
    | Request
    | Body
    | Cancel
    | BeforeUnload
    | Enqueued
    | Booted
    | BootFailed
    | BootExhausted
    | Sent
    | Done
    | TaskStarted
    | TaskDone
    | BeforeUnloadDone
    | Enqueue
    | Delivered
    | Consumed
    | Listen
    | Answered
    | Outlived
)

_SERVER_FRAMES: tuple[type[Any], ...] = (Boot, Request, Body, Cancel, BeforeUnload, Enqueued, Delivered)
_WORKER_FRAMES: tuple[type[Any], ...] = (
    Booted,
    BootFailed,
    BootExhausted,
    Sent,
    Done,
    TaskStarted,
    TaskDone,
    BeforeUnloadDone,
    Enqueue,
    Consumed,
    Listen,
    Answered,
    Outlived,
)
#: Each kind's number → its class and its number of fields.
KINDS: dict[int, tuple[type[Any], int]] = {
    cls._field_defaults["kind"]: (cls, len(cls._fields)) for cls in _SERVER_FRAMES + _WORKER_FRAMES
}
#: The kinds a worker process sends: the only ones the server reads from it.
WORKER_KINDS: dict[int, tuple[type[Any], int]] = {
    number: entry for number, entry in KINDS.items() if entry[0] in _WORKER_FRAMES
}
_new = tuple.__new__


# -- fields that are not plain data travel as plain data ----------------------------------------


def _done_to_wire(frame: Done) -> tuple[Any, ...]:
    ended = frame.ended
    if ended is None:
        return _new(tuple, frame)
    detail = ended.detail if ended.detail is None or type(ended.detail) is int else str(ended.detail)
    return (frame.rid, (str(ended.reason), detail), frame.error, frame.kind)


def _done_from_wire(frame: Done) -> Done:
    ended: Any = frame.ended
    _check(frame, frame.error is None or type(frame.error) is str)
    if ended is None:
        return frame
    _check(frame, type(ended) is tuple and len(ended) == 2 and type(ended[0]) is str)
    _check(frame, ended[1] is None or type(ended[1]) in (str, int))
    return Done(frame.rid, Ended(*ended), frame.error)


def _unload_done_to_wire(frame: BeforeUnloadDone) -> tuple[Any, ...]:
    return (str(frame.reason), frame.kind)


def _unload_done_from_wire(frame: BeforeUnloadDone) -> BeforeUnloadDone:
    return BeforeUnloadDone(StopReason(frame.reason))  # ValueError for a reason that is none


def _task_done_to_wire(frame: TaskDone) -> tuple[Any, ...]:
    reason = None if frame.cut_reason is None else str(frame.cut_reason)
    return (frame.tid, frame.outcome, frame.error, reason, frame.kind)


def _task_done_from_wire(frame: TaskDone) -> TaskDone:
    _check(
        frame,
        type(frame.tid) is int
        and type(frame.outcome) is str
        and (frame.cut_reason is None or type(frame.cut_reason) is str),
    )
    error = frame.error
    if error is None or isinstance(error, Exception):
        return frame
    # A SystemExit or KeyboardInterrupt set on a task of the server would stop the server.
    return frame._replace(error=RuntimeError(f"{type(error).__name__}: {error}"))


def _check(frame: Frame, ok: bool) -> None:
    """What the server acts on in a worker's frame has the type it expects (else ValueError)."""
    if not ok:
        raise ValueError(f"a {type(frame).__name__} frame with fields of the wrong type: {tuple(frame)!r:.80}")


def _task_started_from_wire(frame: TaskStarted) -> TaskStarted:
    # (whether the worker was given that execution is the server's to check: see parent.py)
    _check(frame, type(frame.tid) is int and type(frame.name) is str and type(frame.execution_id) is str)
    return frame


def _booted_from_wire(frame: Booted) -> Booted:
    _check(frame, type(frame.baseline_mb) in (int, float))
    return frame


def _boot_failed_from_wire(frame: BootFailed) -> BootFailed:
    _check(frame, frame.reason in ("boot", "crash") and type(frame.message) is str and type(frame.detail) is str)
    return frame


def _boot_exhausted_from_wire(frame: BootExhausted) -> BootExhausted:
    _check(frame, type(frame.action) is str and type(frame.errno) is int)
    return frame


def _consumed_from_wire(frame: Consumed) -> Consumed:
    _check(frame, type(frame.rid) is int and type(frame.messages) is int and 0 < frame.messages <= WINDOW)
    return frame


def _listen_from_wire(frame: Listen) -> Listen:
    _check(frame, type(frame.rid) is int)
    return frame


def _answered_from_wire(frame: Answered) -> Answered:
    # Every request's answer comes this way: the checks call `_check` only to fail.
    messages: Any = frame.messages
    error = frame.error
    if type(messages) is not list or (error is not None and type(error) is not str):
        _check(frame, False)
    for message in messages:  # (a loop: a generator's frame costs more than the check)
        if type(message) is not dict:
            _check(frame, False)
    return frame


_TO_WIRE: dict[type[Any], Callable[[Any], tuple[Any, ...]]] = {
    Done: _done_to_wire,
    BeforeUnloadDone: _unload_done_to_wire,
    TaskDone: _task_done_to_wire,
}
_FROM_WIRE: dict[type[Any], Callable[[Any], Any]] = {
    Booted: _booted_from_wire,
    BootFailed: _boot_failed_from_wire,
    BootExhausted: _boot_exhausted_from_wire,
    Consumed: _consumed_from_wire,
    Listen: _listen_from_wire,
    Done: _done_from_wire,
    Answered: _answered_from_wire,
    BeforeUnloadDone: _unload_done_from_wire,
    TaskStarted: _task_started_from_wire,
    TaskDone: _task_done_from_wire,
}


# -- encoding and decoding ----------------------------------------------------------------------


def to_wire(frame: Frame) -> tuple[Any, ...]:
    """The plain tuple `frame` travels as (its fields, its kind's number last)."""
    to_wire = _TO_WIRE.get(type(frame))
    return _new(tuple, frame) if to_wire is None else to_wire(frame)


def encode(frame: Frame) -> bytes:
    """The pickled plain tuple of `frame`'s fields."""
    return pickle.dumps(to_wire(frame), protocol=pickle.HIGHEST_PROTOCOL)


def encode_batch(batch: list[tuple[Any, ...]]) -> bytes:
    """The pickled list of the plain tuples of a batch of frames (see :func:`to_wire`): one
    pickling for all the frames a side sends in one turn of its event loop."""
    return pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)


#: The field of each kind that holds an ASGI message (the others carry no body).
_MESSAGE_FIELD: dict[type[Any], int] = {Sent: 1, Body: 1, Request: 2}


def payload_bytes(frame: Frame) -> int:
    """The bytes of body or WebSocket data `frame` carries (what makes a batch large)."""
    field = _MESSAGE_FIELD.get(type(frame))
    if field is None:
        return 0
    message = frame[field]
    if type(message) is not dict:
        return 0
    data = message.get("body") or message.get("bytes") or message.get("text")
    return len(data) if isinstance(data, bytes | bytearray | str) else 0


def _frame(fields: Any, kinds: dict[int, tuple[type[Any], int]]) -> Frame:
    if type(fields) is not tuple:
        raise ValueError(f"not a worker channel frame: {fields!r:.80}")
    try:
        cls, size = kinds[fields[-1]]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"not a worker channel frame: {fields!r:.80}") from None
    if len(fields) != size:
        raise ValueError(f"a {cls.__name__} frame has {size} fields, got {len(fields)}")
    frame: Frame = _new(cls, fields)
    from_wire = _FROM_WIRE.get(cls)
    return frame if from_wire is None else from_wire(frame)


def kind_of(fields: tuple[Any, ...]) -> type[Any]:
    """The class of the frame whose plain tuple is `fields` (one this side made: see :func:`to_wire`)."""
    return KINDS[fields[-1]][0]


def read_frame(fields: Any) -> Frame:
    """The frame of the plain tuple `fields` (a worker process reading the server's frames);
    ValueError if it is not one."""
    if type(fields) is tuple and len(fields) == 6 and fields[5] == 2:  # a Request: every request's first frame
        frame: Request = _new(Request, fields)
        return frame
    return _frame(fields, KINDS)


def read_worker_frame(fields: Any) -> Frame:
    """The frame a worker process sent as the plain tuple `fields` (the server reading it);
    ValueError if it is not a frame a worker sends, or its fields are not of the types the server expects."""
    if type(fields) is tuple and len(fields) == 4 and fields[3] == 18:  # an Answered: every small response
        messages = fields[1]
        error = fields[2]
        if type(messages) is list and (error is None or type(error) is str):
            for message in messages:  # (a loop: a generator's frame costs more than the check)
                if type(message) is not dict:
                    break
            else:
                answered: Answered = _new(Answered, fields)
                return answered
    return _frame(fields, WORKER_KINDS)


def decode(data: bytes | memoryview) -> Frame:
    """The frame `encode` made `data` from (a worker process reading the server's frames);
    ValueError if it is not one."""
    return read_frame(pickle.loads(data))


class _WorkerFrameUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins":
            found = getattr(builtins, name, None)
            if isinstance(found, type) and issubclass(found, BaseException):
                return found
        raise pickle.UnpicklingError(f"a worker frame may not hold {module}.{name}")


def load_worker_frame(data: bytes | memoryview) -> Any:
    """Unpickle what a worker process wrote: plain data and built-in exceptions only.

    Raises pickle.UnpicklingError for anything else (a class, a function: what an attacker
    would use to run code in the server).
    """
    return _WorkerFrameUnpickler(io.BytesIO(data)).load()


def decode_worker_frame(data: bytes | memoryview) -> Frame:
    """The frame a worker process sent (the server reading it), loaded by :func:`load_worker_frame`.

    Raises pickle.UnpicklingError for what holds a class, ValueError for what is not a frame a
    worker sends.
    """
    return read_worker_frame(load_worker_frame(data))


@dataclass(frozen=True)
class Reader:
    """How one end of the channel reads what the other sends: `load` unpickles a batch (a list
    of plain tuples), `frame` makes each of them a frame (ValueError: it is none this end reads)."""

    load: Callable[[bytes | memoryview], Any]
    frame: Callable[[Any], Frame]


#: A worker process reading the server's batches (the server is trusted).
FROM_SERVER = Reader(pickle.loads, read_frame)
#: The server reading a worker's batches: plain data only (:func:`load_worker_frame`), worker kinds only.
FROM_WORKER = Reader(load_worker_frame, read_worker_frame)
