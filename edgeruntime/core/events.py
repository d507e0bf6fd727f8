"""Why a function worker stops, and the events function code listens for with ``EdgeRuntime.on``.

:class:`StopReason` is the one vocabulary for why a worker retires or ends: the supervisor, the
lifecycle, the worker process, run history, metrics and logs all use it. A reason has two
spellings, mapped here and nowhere else: its name (``WallClockTime``, as the edge runtime's logs
print its ``ShutdownReason``) and its snake_case key (``wall_clock``), which is the ``reason`` of
the ``beforeunload`` event (DESIGN.md §2) for the five reasons listeners are told about.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "BeforeUnloadEvent",
    "EventCallback",
    "EventName",
    "StopReason",
    "UnhandledRejectionEvent",
    "UnloadReason",
]

#: Why a worker is about to unload, as ``beforeunload`` listeners see it (the edge runtime's reasons, snake_case).
UnloadReason = Literal["wall_clock", "cpu", "memory", "early_drop", "termination"]


class StopReason(enum.StrEnum):
    """Why a function worker stops taking requests or ends.

    The first five are the edge runtime's ``ShutdownReason`` names; the others are edgeruntime's.
    """

    #: The wall clock: half of it retires the worker, all of it ends it.
    WALL_CLOCK = "WallClockTime"
    #: CPU time: the soft limit retires the worker, the hard limit ends it.
    CPU = "CPUTime"
    #: Memory: half the limit retires the worker, the limit ends it (process isolation).
    MEMORY = "Memory"
    #: A retired worker with nothing left to do ends early.
    EARLY_DROP = "EarlyDrop"
    #: The server shuts down.
    TERMINATION = "TerminationRequested"
    #: The function's files changed: the worker retires so the next request loads them afresh.
    RELOAD = "Reload"
    #: The worker process died on its own (process isolation).
    CRASH = "Crash"
    #: The function's module failed to load, so the worker never served.
    BOOT_FAILURE = "BootFailure"
    #: A sync handler ran on after its request ended (process isolation): the worker retires, and
    #: the thread it cannot stop ends with its process.
    STUCK_HANDLER = "StuckHandler"

    @property
    def key(self) -> str:
        """The snake_case spelling (``wall_clock``): the ``beforeunload`` reason and the retirement metric's label."""
        return _KEYS[self]

    @property
    def unload_reason(self) -> UnloadReason | None:
        """What ``beforeunload`` listeners are told, or None for a reason they are not told about."""
        return _UNLOAD_REASONS.get(self)


_UNLOAD_REASONS: dict[StopReason, UnloadReason] = {
    StopReason.WALL_CLOCK: "wall_clock",
    StopReason.CPU: "cpu",
    StopReason.MEMORY: "memory",
    StopReason.EARLY_DROP: "early_drop",
    StopReason.TERMINATION: "termination",
}
_KEYS: dict[StopReason, str] = {
    **_UNLOAD_REASONS,
    StopReason.RELOAD: "reload",
    StopReason.CRASH: "crash",
    StopReason.BOOT_FAILURE: "boot_failure",
    StopReason.STUCK_HANDLER: "stuck_handler",
}
EventName = Literal["beforeunload", "unhandledrejection"]
#: A listener: sync or async, called with the event.
EventCallback = Callable[[Any], Awaitable[None] | None]


@dataclass(frozen=True)
class BeforeUnloadEvent:
    """Passed to ``beforeunload`` listeners; ``reason`` says why the worker is going away.

    Under ``policy = "per_request"`` it is the request that is about to run out of its budget, and
    ``execution_id`` names it; under ``per_worker`` it is None (the whole worker goes).
    """

    reason: str
    execution_id: str | None = None

    @property
    def detail(self) -> dict[str, str]:
        """The web platform shape, ``{"reason": ...}``, for code ported from ``ev.detail.reason``."""
        return {"reason": self.reason}


@dataclass(frozen=True)
class UnhandledRejectionEvent:
    """Passed to ``unhandledrejection`` listeners when background work raised."""

    error: BaseException
    execution_id: str
    function: str
