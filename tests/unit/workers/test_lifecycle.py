"""The per_worker lifecycle and the per_request budget, on a ManualClock: every threshold, in order."""

from __future__ import annotations

from edgeruntime.core.clock import ManualClock
from edgeruntime.core.context import ExecutionContext
from edgeruntime.core.events import StopReason
from edgeruntime.core.worker_state import WorkerState
from edgeruntime.limits import Limits, Policy
from edgeruntime.workers.lifecycle import RequestBudget, WorkerLifecycle


class Calls:
    """What a lifecycle told its supervisor, as "retire wall_clock", "end cpu" ..."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.in_flight = 0

    def lifecycle(self, limits: Limits, clock: ManualClock, policy: Policy = "per_worker") -> WorkerLifecycle:
        return WorkerLifecycle(
            "probe",
            "w1",
            limits,
            policy,
            retire=lambda reason: self.seen.append(f"retire {reason.key}"),
            end=lambda reason: self.seen.append(f"end {reason.key}"),
            beforeunload=lambda reason: self.seen.append(f"beforeunload {reason.key}"),
            in_flight=lambda: self.in_flight,
            prepare=lambda: self.seen.append("prepare"),
            clock=clock,
        )


def test_the_wall_clock_prepares_retires_warns_and_ends_at_its_shares() -> None:
    clock, calls = ManualClock(), Calls()
    lifecycle = calls.lifecycle(Limits(wall_clock_limit_sec=100), clock)
    lifecycle.start()
    clock.advance(39.9)
    assert calls.seen == []
    clock.advance(0.1)  # 80 % of half the wall clock
    assert calls.seen == ["prepare"]
    clock.advance(10)
    assert calls.seen == ["prepare", "retire wall_clock"]
    clock.advance(40)
    assert calls.seen[-1] == "beforeunload wall_clock"
    calls.in_flight = 1
    clock.advance(10)
    assert calls.seen[-1] == "end wall_clock"
    assert lifecycle.ended and clock.pending == 0
    lifecycle.observe_cpu(10_000)  # an ended lifecycle says nothing more
    assert calls.seen == ["prepare", "retire wall_clock", "beforeunload wall_clock", "end wall_clock"]


def test_stop_cancels_the_timers() -> None:
    clock, calls = ManualClock(), Calls()
    lifecycle = calls.lifecycle(Limits(wall_clock_limit_sec=100), clock)
    lifecycle.start()
    assert clock.pending == 4
    lifecycle.stop()
    clock.advance(1000)
    assert calls.seen == [] and clock.pending == 0


def test_cpu_time_prepares_retires_warns_and_ends_once_each() -> None:
    clock, calls = ManualClock(), Calls()
    lifecycle = calls.lifecycle(Limits(cpu_soft_limit_ms=100, cpu_hard_limit_ms=200), clock)
    meter = lifecycle.meter()
    meter.add(79)
    assert calls.seen == []
    meter.add(1)
    meter.add(20)
    meter.add(80)  # 180 ms: 90 % of the hard limit
    meter.add(5)
    assert calls.seen == ["prepare", "retire cpu", "beforeunload cpu"]
    meter.add(15)
    assert calls.seen[-1] == "end cpu"


def test_a_reading_over_the_cpu_hard_limit_tells_beforeunload_before_the_end() -> None:
    # A worker process's CPU is read every 20 ms: one reading can jump from under 90 % of the hard
    # limit to over it. The listeners are told first all the same (the worker's end waits a little
    # for them), once. Not for memory: a worker over its memory limit is ended at once.
    clock, calls = ManualClock(), Calls()
    lifecycle = calls.lifecycle(Limits(cpu_soft_limit_ms=100, cpu_hard_limit_ms=200), clock)
    lifecycle.observe_cpu(170)
    lifecycle.observe_cpu(210)
    assert calls.seen == ["prepare", "retire cpu", "beforeunload cpu", "end cpu"]
    clock, calls = ManualClock(), Calls()
    lifecycle = calls.lifecycle(Limits(memory_limit_mb=100), clock)
    lifecycle.observe_memory(30)
    lifecycle.observe_memory(120)
    lifecycle.observe_memory(130)
    assert calls.seen == ["end memory"]


def test_per_request_leaves_wall_clock_and_cpu_to_the_requests_and_watches_memory() -> None:
    clock, calls = ManualClock(), Calls()
    lifecycle = calls.lifecycle(Limits(memory_limit_mb=100), clock, policy="per_request")
    lifecycle.start()
    assert clock.pending == 0 and lifecycle.cpu_thresholds() == []
    lifecycle.observe_cpu(1_000_000)
    lifecycle.observe_memory(90)
    assert calls.seen == ["beforeunload memory"]
    lifecycle.observe_memory(100)
    assert calls.seen == ["beforeunload memory", "end memory"]


def test_a_request_budget_runs_out_once_on_its_wall_clock_or_its_cpu() -> None:
    clock = ManualClock()
    worker = WorkerState("probe", env={})
    exceeded: list[tuple[str, StopReason]] = []

    def budget(limits: Limits) -> tuple[RequestBudget, ExecutionContext]:
        ctx = ExecutionContext(function="probe", worker=worker)
        return RequestBudget(ctx, limits, lambda b, reason: exceeded.append((b.ctx.execution_id, reason)), clock), ctx

    by_time, first = budget(Limits(wall_clock_limit_sec=10))
    by_cpu, second = budget(Limits(cpu_soft_limit_ms=50, cpu_hard_limit_ms=100))
    by_cpu.meter.add(100)
    clock.advance(10)
    by_time.meter.add(10_000)  # already out of budget: not told twice
    assert exceeded == [(second.execution_id, StopReason.CPU), (first.execution_id, StopReason.WALL_CLOCK)]
    closed, _ = budget(Limits(wall_clock_limit_sec=10))
    closed.close()
    clock.advance(100)
    assert len(exceeded) == 2


def test_a_request_budget_tells_beforeunload_once_at_90_percent_of_its_wall_clock_or_cpu() -> None:
    clock = ManualClock()
    worker = WorkerState("probe", env={})
    seen: list[tuple[str, str, StopReason]] = []

    def budget(limits: Limits) -> tuple[RequestBudget, ExecutionContext]:
        ctx = ExecutionContext(function="probe", worker=worker)
        made = RequestBudget(
            ctx,
            limits,
            lambda b, reason: seen.append(("exceeded", b.ctx.execution_id, reason)),
            clock,
            lambda b, reason: seen.append(("beforeunload", b.ctx.execution_id, reason)),
        )
        return made, ctx

    by_time, first = budget(Limits(wall_clock_limit_sec=10, cpu_soft_limit_ms=50, cpu_hard_limit_ms=100))
    clock.advance(8.9)
    assert seen == []
    clock.advance(0.1)
    assert seen == [("beforeunload", first.execution_id, StopReason.WALL_CLOCK)]
    by_time.meter.add(95)  # 90 % of its CPU too: told once only
    clock.advance(1)
    assert seen[1:] == [("exceeded", first.execution_id, StopReason.WALL_CLOCK)]

    seen.clear()
    by_cpu, second = budget(Limits(wall_clock_limit_sec=10, cpu_soft_limit_ms=50, cpu_hard_limit_ms=100))
    by_cpu.meter.add(89)
    assert seen == []
    by_cpu.meter.add(1)
    by_cpu.meter.add(10)
    clock.advance(9)  # its wall-clock warning comes to nothing: beforeunload was told
    assert seen == [
        ("beforeunload", second.execution_id, StopReason.CPU),
        ("exceeded", second.execution_id, StopReason.CPU),
    ]

    seen.clear()
    jumped, third = budget(Limits(cpu_soft_limit_ms=50, cpu_hard_limit_ms=100))
    jumped.meter.add(500)  # past 90 % and 100 % in one step: beforeunload first, then the end
    assert seen == [
        ("beforeunload", third.execution_id, StopReason.CPU),
        ("exceeded", third.execution_id, StopReason.CPU),
    ]

    seen.clear()
    done, _ = budget(Limits(wall_clock_limit_sec=10))
    done.close()
    clock.advance(100)
    assert seen == []
