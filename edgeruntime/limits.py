"""Resource limits of a function worker, in the units their names carry.

A leaf: it imports nothing from edgeruntime, so every layer may use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DEFAULT_LIMITS",
    "FREE_TIER",
    "LIMIT_KEYS",
    "LIMIT_MAXIMUMS",
    "PRO_TIER",
    "Isolation",
    "Limits",
    "Policy",
    "limit_problem",
]

SECONDS = 1.0
MILLISECONDS = 1.0
MEGABYTES = 1.0
#: The largest value a limit may have, by its unit: a year of wall clock or CPU time, a tebibyte
#: of memory or body. Anything larger is a typo, and breaks what it is handed to (rlimits, timers).
MAX_SECONDS = 365 * 24 * 3600 * SECONDS
MAX_MILLISECONDS = MAX_SECONDS * 1000 * MILLISECONDS
MAX_MEGABYTES = 1024 * 1024 * MEGABYTES

Policy = Literal["per_worker", "per_request"]
Isolation = Literal["inline", "process"]


@dataclass(frozen=True)
class Limits:
    """Limits of one function's worker. Defaults are those of the real local runtime (SB).

    Example::

        Limits(wall_clock_limit_sec=2, cpu_soft_limit_ms=100, cpu_hard_limit_ms=200)
    """

    #: The worker's lifetime: retired at half of it, ended at all of it (hosted free tier: 150 s).
    wall_clock_limit_sec: float = 400 * SECONDS
    #: CPU time after which the worker retires.
    cpu_soft_limit_ms: float = 1000 * MILLISECONDS
    #: CPU time after which the worker is ended.
    cpu_hard_limit_ms: float = 2000 * MILLISECONDS
    #: Memory after which the worker is ended (enforced with process isolation).
    memory_limit_mb: float = 256 * MEGABYTES
    #: A request whose response has not started after this long gets 504.
    request_idle_timeout_sec: float = 150 * SECONDS
    #: Larger request bodies get 413.
    max_request_body_mb: float = 20 * MEGABYTES
    #: A larger WebSocket message from a client closes its connection with 1009 (message too big).
    max_websocket_message_mb: float = 1 * MEGABYTES

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            problem = limit_problem(f.name, value)
            if problem is not None:
                raise ValueError(f"{f.name} {problem}, got {value!r}")
        if self.cpu_soft_limit_ms > self.cpu_hard_limit_ms:
            raise ValueError(
                f"cpu_soft_limit_ms ({self.cpu_soft_limit_ms}) must not exceed "
                f"cpu_hard_limit_ms ({self.cpu_hard_limit_ms})"
            )

    def replace(self, **changes: Any) -> Limits:
        """A copy with `changes` applied (validated)."""
        return dataclasses.replace(self, **changes)

    @property
    def max_request_body_bytes(self) -> int:
        return int(self.max_request_body_mb * 1024 * 1024)

    @property
    def max_websocket_message_bytes(self) -> int:
        return int(self.max_websocket_message_mb * 1024 * 1024)


#: The config keys that are limits (settable in `[edge_runtime]` and `[functions.<name>]`).
LIMIT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Limits))
_MAXIMUM_BY_UNIT = {"_sec": MAX_SECONDS, "_ms": MAX_MILLISECONDS, "_mb": MAX_MEGABYTES}
#: The largest value of each limit (see MAX_SECONDS).
LIMIT_MAXIMUMS: Mapping[str, float] = {
    key: next(maximum for unit, maximum in _MAXIMUM_BY_UNIT.items() if key.endswith(unit)) for key in LIMIT_KEYS
}


def limit_problem(key: str, value: object) -> str | None:
    """What is wrong with `value` for the limit `key` ("must be ..."), or None if it will do."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if value <= 0:
        return "must be greater than 0"
    if value > LIMIT_MAXIMUMS[key]:
        return f"must be at most {LIMIT_MAXIMUMS[key]:.0f}"
    return None


DEFAULT_LIMITS = Limits()
#: `--tier free`: the hosted free plan's wall clock.
FREE_TIER = Limits(wall_clock_limit_sec=150 * SECONDS)
#: `--tier pro`: the hosted paid plans' wall clock.
PRO_TIER = Limits(wall_clock_limit_sec=400 * SECONDS)
