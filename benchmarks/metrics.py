"""Metrics benchmark: what recording one invocation and one wait_until task costs.

    python -m benchmarks metrics [--rounds 15] [--number 200000]

Times, in the same run with rounds alternated, the per-request observer the dashboard hooks to
the gateway (for a 0.4 ms request, in the first duration bucket, and a 30 ms one) and the
per-task background observer, two ways:

- labelled children: prometheus_client `Counter`/`Histogram` children, cached per label set
  (what `edgeruntime.dashboard.metrics` did before: `inc()`/`observe()` lock and call several times), plus
  the dashboard's last-invocation record;
- plain counters: `edgeruntime.dashboard.metrics.Metrics` as it is (dict of small lists, rendered by a
  collector at scrape time).

Prints ns per call (min and median of the rounds) and the cost of one scrape of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Container
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from edgeruntime.core.background import BackgroundTask, TaskOutcome
from edgeruntime.dashboard.metrics import DURATION_BUCKETS_SEC, UNKNOWN_FUNCTION, Metrics
from edgeruntime.gateway.extensions import Invocation

#: Per invocation and per background task, on this project's 2-core machine.
GOAL_NS = 400.0
#: Served functions and the label sets each gets, for the scrape timing.
FUNCTIONS = tuple(f"fn{i}" for i in range(20))
STATUSES = (200, 202, 404, 500)


class LabelledChildren:
    """The previous hot path: prometheus_client children cached per label set."""

    def __init__(self, functions: Container[str]) -> None:
        self.functions = functions
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("r", "r", ["function", "trigger", "status"], registry=self.registry)
        self.duration = Histogram("d", "d", ["function"], buckets=DURATION_BUCKETS_SEC, registry=self.registry)
        self.background = Counter("b", "b", ["function", "outcome", "reason"], registry=self.registry)
        self.children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.last_invocations: dict[str, Invocation] = {}

    def _function(self, name: str) -> str:
        return name if name in self.functions else UNKNOWN_FUNCTION

    def invocation(self, record: Invocation) -> None:
        function = self._function(record.function)
        key = (function, record.trigger, record.status)
        children = self.children.get(key)
        if children is None:
            children = self.children[key] = (
                self.requests.labels(function, record.trigger, str(record.status)),
                self.duration.labels(function),
            )
        children[0].inc()
        children[1].observe(record.duration_ms / 1000)

    def on_invocation(self, record: Invocation) -> None:
        """What `Dashboard.on_invocation` did: the metrics, then the function's last invocation."""
        self.invocation(record)
        if record.function in self.functions:
            self.last_invocations[record.function] = record

    def background_task(self, task: BackgroundTask) -> None:
        self.background.labels(self._function(task.function), str(task.outcome), task.cut_reason or "").inc()

    def render(self) -> bytes:
        data: bytes = generate_latest(self.registry)
        return data


def _ns_per_call(call: Callable[[Any], object], argument: object, number: int) -> float:
    return timeit.timeit("call(argument)", globals={"call": call, "argument": argument}, number=number) / number * 1e9


def _fill(invocation: Callable[[Invocation], None], background: Callable[[BackgroundTask], None]) -> None:
    """Give every function several label sets and a spread of durations, as a busy server has."""
    for i, function in enumerate(FUNCTIONS):
        for status in STATUSES:
            for trigger in ("http", "queue"):
                invocation(Invocation(function, trigger, "id", "POST", "/", status, 0.0, float(i * 37 % 900)))
        background(_task(function, TaskOutcome.COMPLETED))
        background(_task(function, TaskOutcome.CUT, "wall_clock"))


def _task(function: str, outcome: TaskOutcome, cut_reason: str | None = None) -> BackgroundTask:
    done: Any = None  # never awaited: the observers read the task's outcome only
    return BackgroundTask(done, "work", function, "id", outcome=outcome, cut_reason=cut_reason)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks metrics", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="alternated rounds (default 15)")
    parser.add_argument("--number", type=int, default=200_000, help="calls per round (default 200000)")
    args = parser.parse_args(argv)

    served = dict.fromkeys(FUNCTIONS)
    old, new = LabelledChildren(served), Metrics(served)
    for metrics in (old, new):
        _fill(metrics.invocation, metrics.background_task)
    fast = Invocation("fn3", "http", "id", "POST", "/functions/v1/fn3", 202, time.time(), 0.42)
    slow = fast._replace(duration_ms=30.0)  # past the first bucket: a bisect finds its bucket
    task = _task("fn3", TaskOutcome.COMPLETED)
    cases: dict[str, tuple[Callable[[Any], object], object]] = {
        "invocation, labelled children": (old.on_invocation, fast),
        "invocation, plain counters": (new.invocation, fast),
        "invocation 30 ms, labelled children": (old.on_invocation, slow),
        "invocation 30 ms, plain counters": (new.invocation, slow),
        "background task, labelled children": (old.background_task, task),
        "background task, plain counters": (new.background_task, task),
        "scrape, labelled children": (lambda _: old.render(), None),
        "scrape, plain counters": (lambda _: new.render(), None),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (call, argument) in cases.items():
            number = args.number if not name.startswith("scrape") else max(1, args.number // 2000)
            times[name].append(_ns_per_call(call, argument, number))

    print(f"ns per call, min / median of {args.rounds} rounds (goal <= {GOAL_NS:.0f} ns per invocation and task):")
    for name, values in times.items():
        low, median = min(values), statistics.median(values)
        if name.startswith("scrape"):
            print(f"  {name:<38} {low / 1000:9.1f} / {median / 1000:9.1f} us")
            continue
        verdict = "" if "labelled" in name else f"  ({'ok' if low <= GOAL_NS else 'over goal'})"
        print(f"  {name:<38} {low:9.0f} / {median:9.0f} ns{verdict}")
    for what in ("invocation", "invocation 30 ms", "background task"):
        before, after = min(times[f"{what}, labelled children"]), min(times[f"{what}, plain counters"])
        print(f"  {what}: {before / after:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
