"""The worker lifecycle policies: when a worker retires, gets ``beforeunload`` and is ended.

``per_worker`` (the edge runtime's default, :class:`WorkerLifecycle`): one worker per function
serves concurrent requests. At half the wall clock, at the CPU soft limit or at half the memory
limit it retires (new requests go to a fresh worker); at the full wall clock, the CPU hard limit or
the memory limit it is ended. ``beforeunload`` fires once at 90 % of each limit. At 80 % of what
retires it, a worker can have its successor prepared (process isolation boots the next worker
process then, so the hand-over does not wait for a boot).

``per_request`` (:class:`RequestBudget`): every request has its own wall-clock and CPU budget,
counted from its arrival and covering the background work it registered. ``beforeunload`` fires
once per request, at 90 % of its wall clock or of its CPU hard limit (whichever comes first), with
the request's execution id on the event.

Log lines use the edge runtime's own messages and shutdown reason names
(:class:`edgeruntime.core.events.StopReason`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeruntime.core.clock import LOOP_CLOCK, Clock, Timer
from edgeruntime.core.events import StopReason
from edgeruntime.core.metering import CpuMeter
from edgeruntime.limits import Limits, Policy

if TYPE_CHECKING:
    from edgeruntime.core.context import ExecutionContext

__all__ = ["BEFOREUNLOAD_RATIO", "PREPARE_RATIO", "RequestBudget", "WorkerLifecycle"]

logger = logging.getLogger("edgeruntime")

#: `beforeunload` fires at this share of each limit (the edge runtime's default, 90 %).
BEFOREUNLOAD_RATIO = 0.9
#: A worker using this share of its memory limit retires (a "resource alert").
MEMORY_ALERT_RATIO = 0.5
#: At this share of what retires a worker (half the wall clock, the CPU soft limit, the memory
#: alert), its successor is prepared.
PREPARE_RATIO = 0.8


class WorkerLifecycle:
    """The ``per_worker`` limits of one worker: timers and thresholds that retire or end it.

    The supervisor passes the callbacks `retire(reason)`, `end(reason)`, `beforeunload(reason)`
    (each with a StopReason) and, optionally, `prepare()` (the worker will retire soon); each is
    called at most once per reason. Under ``per_request`` only the memory limit is watched here
    (the other limits are per request, see :class:`RequestBudget`).
    """

    def __init__(
        self,
        function: str,
        worker_id: str,
        limits: Limits,
        policy: Policy,
        *,
        retire: Callable[[StopReason], None],
        end: Callable[[StopReason], None],
        beforeunload: Callable[[StopReason], None],
        in_flight: Callable[[], int],
        prepare: Callable[[], None] | None = None,
        clock: Clock = LOOP_CLOCK,
    ) -> None:
        self.function = function
        self.worker_id = worker_id
        self.limits = limits
        self.policy = policy
        self._retire = retire
        self._end = end
        self._beforeunload = beforeunload
        self._in_flight = in_flight
        self._prepare = prepare
        self._clock = clock
        self._timers: list[Timer] = []
        self._fired: set[str] = set()
        self.ended = False

    def _log(self, message: str, level: int = logging.INFO, suffix: str = "") -> None:
        logger.log(level, "%s: isolate: %s%s", message, self.worker_id, suffix, extra={"function": self.function})

    def _once(self, key: str) -> bool:
        if key in self._fired or self.ended:
            return False
        self._fired.add(key)
        return True

    def start(self) -> None:
        """Start the wall-clock timers (per_worker)."""
        if self.policy != "per_worker":
            return
        clock = self._clock
        wall = self.limits.wall_clock_limit_sec
        self._timers = [
            clock.call_later(wall / 2 * PREPARE_RATIO, self._prepare_once),
            clock.call_later(wall / 2, self._wall_clock_warning),
            clock.call_later(wall * BEFOREUNLOAD_RATIO, self._notify, StopReason.WALL_CLOCK),
            clock.call_later(wall, self._wall_clock_reached),
        ]

    def stop(self) -> None:
        """The worker is gone: no more callbacks."""
        self.ended = True
        for timer in self._timers:
            timer.cancel()

    def _notify(self, reason: StopReason) -> None:
        if self._once(f"beforeunload:{reason}"):
            self._beforeunload(reason)

    def _prepare_once(self) -> None:
        if self._prepare is not None and self._once("prepare"):
            self._prepare()

    def retire(self, message: str, reason: StopReason) -> None:
        """Retire the worker for a cause outside these limits (`reason`), logging `message` once.

        Like the limits' own retirements: at most once, and not after the worker has ended.
        """
        self._retire_once(message, reason)

    def _retire_once(self, message: str, reason: StopReason) -> None:
        if self._once(f"log:{message}"):
            self._log(message)
        if self._once("retire"):
            self._retire(reason)

    def _finish(self, reason: StopReason, message: str, suffix: str = "") -> None:
        if self._once("end"):
            self._log(message, logging.WARNING, suffix)
            self.stop()
            self._end(reason)

    def _wall_clock_warning(self) -> None:
        self._retire_once("wall clock duration warning", StopReason.WALL_CLOCK)

    def _wall_clock_reached(self) -> None:
        in_flight = "true" if self._in_flight() else "false"
        self._finish(StopReason.WALL_CLOCK, "wall clock duration reached", f" (in_flight_req_exists = {in_flight})")

    def cpu_thresholds(self) -> list[float]:
        """The CPU times (ms) at which :meth:`observe_cpu` acts."""
        if self.policy != "per_worker":
            return []
        soft, hard = self.limits.cpu_soft_limit_ms, self.limits.cpu_hard_limit_ms
        return sorted({soft * PREPARE_RATIO, soft, hard * BEFOREUNLOAD_RATIO, hard})

    def next_cpu_check(self, used_ms: float) -> float:
        """The next CPU time (ms) worth a call of :meth:`observe_cpu`."""
        return next((t for t in self.cpu_thresholds() if t > used_ms), float("inf"))

    def observe_cpu(self, used_ms: float) -> None:
        """The worker has used `used_ms` of CPU: retire, warn or end it."""
        if self.policy != "per_worker" or self.ended:
            return
        limits = self.limits
        if used_ms >= limits.cpu_soft_limit_ms * PREPARE_RATIO:
            self._prepare_once()
        if used_ms >= limits.cpu_soft_limit_ms:
            self._retire_once("CPU time soft limit reached", StopReason.CPU)
        if used_ms >= limits.cpu_hard_limit_ms * BEFOREUNLOAD_RATIO:
            # Also when a reading jumps past the 90 % window straight over the hard limit (a worker
            # process's CPU is read every 20 ms, in 10 ms ticks): the listeners are told first.
            self._notify(StopReason.CPU)
        if used_ms >= limits.cpu_hard_limit_ms:
            self._finish(StopReason.CPU, "CPU time hard limit reached")

    def observe_memory(self, used_mb: float) -> None:
        """The worker's process uses `used_mb` of memory: retire, warn or end it."""
        if self.ended:
            return
        limit = self.limits.memory_limit_mb
        if used_mb >= limit:
            # Ended at once, listeners told or not: a worker that allocates fast must not be given
            # the time the end waits for them (the CPU limit's end may wait, see `observe_cpu`).
            self._finish(StopReason.MEMORY, "memory limit reached for the worker")
            return
        if used_mb >= limit * BEFOREUNLOAD_RATIO:
            self._notify(StopReason.MEMORY)
        if self.policy != "per_worker":
            return
        if used_mb >= limit * MEMORY_ALERT_RATIO * PREPARE_RATIO:
            self._prepare_once()
        if used_mb >= limit * MEMORY_ALERT_RATIO:
            self._retire_once("memory usage warning", StopReason.MEMORY)

    def meter(self) -> CpuMeter:
        """A CPU meter that reports to this lifecycle at each threshold."""
        meter = CpuMeter(self.function)

        def crossed(used_ms: float) -> None:
            meter.next_check_ms = self.next_cpu_check(used_ms)
            self.observe_cpu(used_ms)

        meter.on_threshold = crossed
        meter.next_check_ms = self.next_cpu_check(0.0)
        return meter


class RequestBudget:
    """The ``per_request`` budget of one request: wall clock and CPU from its arrival.

    The request and the background work it registers are charged to the same meter and bounded by
    the same wall clock. `beforeunload(budget, reason)` is called once, at 90 % of either (or when
    it runs out, if it jumped past 90 % at once); `exceeded(budget, reason)` once, when either runs out.
    """

    def __init__(
        self,
        ctx: ExecutionContext,
        limits: Limits,
        exceeded: Callable[[RequestBudget, StopReason], None],
        clock: Clock = LOOP_CLOCK,
        beforeunload: Callable[[RequestBudget, StopReason], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.limits = limits
        self.reason: StopReason | None = None
        #: Why `beforeunload` was dispatched for this request, once it was.
        self.unloading: StopReason | None = None
        self._exceeded = exceeded
        self._beforeunload = beforeunload
        self.meter = CpuMeter(ctx.function, self._cpu)
        wall = limits.wall_clock_limit_sec
        self._warning: Timer | None = None
        self.meter.next_check_ms = limits.cpu_hard_limit_ms
        if beforeunload is not None:
            self.meter.next_check_ms *= BEFOREUNLOAD_RATIO
            self._warning = clock.call_later(wall * BEFOREUNLOAD_RATIO, self._notify, StopReason.WALL_CLOCK)
        self._timer = clock.call_later(wall, self._fire, StopReason.WALL_CLOCK)

    def _cpu(self, used_ms: float) -> None:
        hard = self.limits.cpu_hard_limit_ms
        if used_ms < hard:
            self.meter.next_check_ms = hard
            self._notify(StopReason.CPU)
            return
        self.meter.next_check_ms = float("inf")
        self._fire(StopReason.CPU)

    def _notify(self, reason: StopReason) -> None:
        if self.unloading is not None or self.reason is not None or self._beforeunload is None:
            return
        self.unloading = reason
        if self._warning is not None:
            self._warning.cancel()
        self._beforeunload(self, reason)

    def _fire(self, reason: StopReason) -> None:
        if self.reason is not None:
            return
        self._notify(reason)
        self.reason = reason
        self._timer.cancel()
        message = "wall clock duration reached" if reason is StopReason.WALL_CLOCK else "CPU time hard limit reached"
        logger.warning(
            "%s: request: %s (reason %s)",
            message,
            self.ctx.execution_id,
            reason,
            extra={"function": self.ctx.function, "execution_id": self.ctx.execution_id},
        )
        self._exceeded(self, reason)

    def close(self) -> None:
        """The request and all its background work ended."""
        self._timer.cancel()
        if self._warning is not None:
            self._warning.cancel()
        # Its last steps are charged at the next loop iteration (see metering): they must not
        # fail a request that has ended.
        self.meter.next_check_ms = float("inf")
