"""Prometheus metrics of one app, served at ``/_internal/metrics`` in the text format.

Each app has its own ``CollectorRegistry`` (never the process-global one), so several apps and
test clients in one process never collide. The runtime reports to it through plain methods:
``invocation`` and ``background_task`` are hooked to the gateway's observers, ``cron_tick`` to the
scheduler, and the worker lifecycle calls ``worker_retired(function, reason)`` and
``worker_ended(function, reason)``. Queue depth is read from the jobs store at scrape time.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

if TYPE_CHECKING:
    from edgeruntime.app import Invocation
    from edgeruntime.background import BackgroundTask
    from edgeruntime.jobs.scheduler import CronRun
    from edgeruntime.jobs.store import QueueStats

__all__ = ["CONTENT_TYPE", "UNKNOWN_FUNCTION", "Metrics"]

#: The classic text format every Prometheus version scrapes (the metric names need no escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The `function` label of requests to names that are not functions (keeps label values bounded).
UNKNOWN_FUNCTION = "_unknown"
#: Request durations: from 5 ms to the 400 s default wall clock.
DURATION_BUCKETS_SEC = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0, 400.0)


class Metrics:
    """The metrics of one app (see the module docstring)."""

    def __init__(self, functions: Container[str] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: Known function names (a live container); others count as `_unknown`. None: every name.
        self.functions = functions
        self._invocation_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.requests = Counter(
            "edgeruntime_requests",
            "Finished invocations by function, trigger (http, cron, queue) and HTTP status.",
            ["function", "trigger", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "edgeruntime_request_duration_seconds",
            "Invocation duration by function, from arrival to the end of the response.",
            ["function"],
            buckets=DURATION_BUCKETS_SEC,
            registry=self.registry,
        )
        self.background = Counter(
            "edgeruntime_background_tasks",
            "Finished wait_until tasks by function, outcome (completed, failed, cut) and cut reason.",
            ["function", "outcome", "reason"],
            registry=self.registry,
        )
        self.retirements = Counter(
            "edgeruntime_worker_retirements",
            "Workers retired (no new requests) by function and reason.",
            ["function", "reason"],
            registry=self.registry,
        )
        self.endings = Counter(
            "edgeruntime_worker_ends",
            "Workers ended by function and shutdown reason "
            "(WallClockTime, CPUTime, Memory, EarlyDrop, TerminationRequested).",
            ["function", "reason"],
            registry=self.registry,
        )
        self.cron_ticks = Counter(
            "edgeruntime_cron_ticks",
            "Cron ticks handled by this instance by job and status (succeeded, failed, skipped).",
            ["cron", "status"],
            registry=self.registry,
        )
        self.queue_jobs = Gauge(
            "edgeruntime_queue_jobs",
            "Jobs in the store by status (queued, running, succeeded, failed).",
            ["status"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "edgeruntime_queue_depth", "Jobs waiting to be delivered (queued).", registry=self.registry
        )
        self.queue_oldest = Gauge(
            "edgeruntime_queue_oldest_age_seconds",
            "Age of the oldest queued job (0 when the queue is empty).",
            registry=self.registry,
        )

    def _function(self, name: str) -> str:
        if not name or (self.functions is not None and name not in self.functions):
            return UNKNOWN_FUNCTION
        return name

    # -- what the runtime reports ------------------------------------------------------------

    def invocation(self, record: Invocation) -> None:
        """One finished invocation (an `EdgeApp.observers` entry)."""
        # On every request's path: the labelled children are looked up once, then cached
        # (`.labels()` validates and locks on every call).
        # The key uses the served name (`_unknown` otherwise), so requests cannot grow the cache.
        function = self._function(record.function)
        key = (function, record.trigger, record.status)
        children = self._invocation_children.get(key)
        if children is None:
            children = self._invocation_children[key] = (
                self.requests.labels(function, record.trigger, str(record.status)),
                self.duration.labels(function),
            )
        children[0].inc()
        children[1].observe(record.duration_ms / 1000)

    def background_task(self, task: BackgroundTask) -> None:
        """One finished wait_until task (an `EdgeApp.background_observers` entry)."""
        self.background.labels(self._function(task.function), str(task.outcome), task.cut_reason or "").inc()

    def worker_retired(self, function: str, reason: str) -> None:
        """A worker stopped taking requests (`wall_clock`, `cpu`, `memory`, `reload`)."""
        self.retirements.labels(self._function(function), reason).inc()

    def worker_event(self, event: str, function: str, reason: str) -> None:
        """A supervisor's worker observer: "retired" or "ended", with the reason."""
        if event == "retired":
            self.worker_retired(function, reason)
        else:
            self.worker_ended(function, reason)

    def worker_ended(self, function: str, reason: str) -> None:
        """A worker was ended, with the runtime's shutdown reason (`WallClockTime`, `EarlyDrop`, ...)."""
        self.endings.labels(self._function(function), reason).inc()

    def cron_tick(self, run: CronRun) -> None:
        """A cron tick this instance fired or skipped (a `Scheduler.observers` entry)."""
        self.cron_ticks.labels(run.cron, str(run.status)).inc()

    def queue(self, stats: QueueStats, now: float) -> None:
        """The queue as the store sees it, set just before a scrape."""
        for status in ("queued", "running", "succeeded", "failed"):
            self.queue_jobs.labels(status).set(stats.counts.get(status, 0))
        self.queue_depth.set(stats.counts.get("queued", 0))
        oldest = stats.oldest_queued_at
        self.queue_oldest.set(max(0.0, now - oldest) if oldest is not None else 0.0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        data: bytes = generate_latest(self.registry)
        return data
