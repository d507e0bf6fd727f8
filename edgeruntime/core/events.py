"""The events function code listens for with ``EdgeRuntime.on``: ``beforeunload`` and ``unhandledrejection``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["BeforeUnloadEvent", "EventCallback", "EventName", "UnhandledRejectionEvent", "UnloadReason"]

#: Why a worker is about to unload (the edge runtime's reasons, snake_case).
UnloadReason = Literal["wall_clock", "cpu", "memory", "early_drop", "termination"]
EventName = Literal["beforeunload", "unhandledrejection"]
#: A listener: sync or async, called with the event.
EventCallback = Callable[[Any], Awaitable[None] | None]


@dataclass(frozen=True)
class BeforeUnloadEvent:
    """Passed to ``beforeunload`` listeners; ``reason`` says why the worker is going away."""

    reason: str

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
