"""The frames between the server and a worker process, one named tuple per kind, read by name.

A frame travels as the plain tuple of its fields, its kind's number last (each class's default
for ``kind``): pickling a plain tuple costs a third of pickling a named tuple, which pickle
stores with a reference to its class. :func:`decode` turns it back into its class.

Server → worker process: :class:`Boot`, :class:`Request`, :class:`Body`, :class:`Cancel`,
:class:`BeforeUnload`. Worker process → server: :class:`Booted`, :class:`BootFailed`,
:class:`Sent`, :class:`Done`, :class:`TaskStarted`, :class:`TaskDone`, :class:`BeforeUnloadDone`.
"""

from __future__ import annotations

import pickle
from typing import Any, Literal, NamedTuple, TypeAlias

from edgeruntime.core.events import StopReason
from edgeruntime.core.types import Message, Scope
from edgeruntime.limits import Limits, Policy

__all__ = [
    "BeforeUnload",
    "BeforeUnloadDone",
    "Body",
    "Boot",
    "BootFailed",
    "Booted",
    "Cancel",
    "Done",
    "Ended",
    "Frame",
    "Request",
    "Sent",
    "TaskDone",
    "TaskStarted",
    "decode",
    "encode",
]


# -- server → worker process ------------------------------------------------------------------


class Boot(NamedTuple):
    """Load the function in `directory` (the first frame a worker process gets)."""

    name: str
    directory: str
    limits: Limits
    policy: Policy
    log_format: str
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
    """Request `rid` is over: `ended` None when the function answered it."""

    rid: int
    ended: Ended | None
    kind: int = 9


class TaskStarted(NamedTuple):
    """A `wait_until` task started in the worker process."""

    tid: int
    name: str
    execution_id: str
    kind: int = 10


class TaskDone(NamedTuple):
    """A `wait_until` task ended: its outcome, its error (if it survives pickling) and why it was cut."""

    tid: int
    outcome: str
    error: BaseException | None
    cut_reason: str | None
    kind: int = 11


class BeforeUnloadDone(NamedTuple):
    """The `beforeunload` listeners for `reason` have run."""

    reason: StopReason
    kind: int = 12


Frame: TypeAlias = (
    Boot
    | Request
    | Body
    | Cancel
    | BeforeUnload
    | Booted
    | BootFailed
    | Sent
    | Done
    | TaskStarted
    | TaskDone
    | BeforeUnloadDone
)

#: Each kind's number → its class and its number of fields.
KINDS: dict[int, tuple[type[Any], int]] = {
    cls._field_defaults["kind"]: (cls, len(cls._fields))
    for cls in (Boot, Request, Body, Cancel, BeforeUnload)
    + (Booted, BootFailed, Sent, Done, TaskStarted, TaskDone, BeforeUnloadDone)
}
_new = tuple.__new__


def encode(frame: Frame) -> bytes:
    """The pickled plain tuple of `frame`'s fields."""
    return pickle.dumps(_new(tuple, frame), protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes | memoryview) -> Frame:
    """The frame `encode` made `data` from; ValueError if it is not one."""
    fields = pickle.loads(data)
    try:
        cls, size = KINDS[fields[-1]]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"not a worker channel frame: {fields!r:.80}") from None
    if len(fields) != size:
        raise ValueError(f"a {cls.__name__} frame has {size} fields, got {len(fields)}")
    frame: Frame = _new(cls, fields)
    return frame
