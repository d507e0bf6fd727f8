"""Prometheus metrics of one app, served at ``/_internal/metrics`` in the text format.

Each app has its own ``CollectorRegistry`` (never the process-global one), so several apps and
test clients in one process never collide. The runtime reports to it through plain methods:
``invocation`` and ``background_task`` are hooked to the gateway's observers, ``cron_tick`` to the
scheduler, and the worker lifecycle calls ``worker_retired(function, reason)`` and
``worker_ended(function, reason)``. Queue depth is read from the jobs store at scrape time.

``invocation`` and ``background_task`` run for every request and every ``wait_until`` task, so
they only add to plain counters in dicts (one small list per label set); a collector turns those
into Prometheus metric families when scraped, and prometheus_client writes the text format. Both
run on the event loop thread, as do scrapes, so the counters need no lock. Worker and cron
events are counted the same way; only the queue gauges, set at scrape time, are
prometheus_client's own metrics.

Under ``--workers N`` each serving process counts its own; a scrape reaches one of them, which
asks every other for a :meth:`Metrics.snapshot` (its counters and histograms as plain data,
through the supervisor) and renders their sum with :meth:`Metrics.render_gathered`, so a scrape
never sees one process's counters. The queue gauges are read from the store, once.
"""

from __future__ import annotations

import functools
import time
from bisect import bisect_left
from collections.abc import Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from edgeruntime.gateway.extensions import Extension

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from edgeruntime.core.background import BackgroundTask
    from edgeruntime.core.events import StopReason
    from edgeruntime.gateway.extensions import Invocation
    from edgeruntime.jobs.scheduler import CronRun
    from edgeruntime.jobs.store import QueueStats

__all__ = ["CONTENT_TYPE", "DURATION_BUCKETS_SEC", "UNKNOWN_FUNCTION", "Metrics", "merge_snapshots", "valid_snapshot"]

#: The classic text format every Prometheus version scrapes (the metric names need no escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The `function` label of requests to names that are not functions (keeps label values bounded).
UNKNOWN_FUNCTION = "_unknown"
#: Request durations: from 5 ms to the 400 s default wall clock.
DURATION_BUCKETS_SEC = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 150.0, 400.0)

_REQUESTS = (
    "edgeruntime_requests",
    "Finished invocations by function, trigger (http, cron, queue, websocket: one per connection) and HTTP status.",
)
_DURATION = (
    "edgeruntime_request_duration_seconds",
    "Invocation duration by function, from arrival to the end of the response (WebSocket connections excluded).",
)
#: A WebSocket connection lasts as long as it is open: it would swamp the request durations.
_UNTIMED_TRIGGERS = frozenset({"websocket"})
_BACKGROUND = (
    "edgeruntime_background_tasks",
    "Finished wait_until tasks by function, outcome (completed, failed, cut) and cut reason.",
)

#: The counters of worker and cron events: (name, help, label names), in the exposition's order.
_EVENTS = (
    (
        "edgeruntime_worker_retirements",
        "Workers retired (no new requests) by function and reason.",
        ("function", "reason"),
    ),
    (
        "edgeruntime_worker_ends",
        "Workers ended by function and shutdown reason "
        "(WallClockTime, CPUTime, Memory, EarlyDrop, TerminationRequested).",
        ("function", "reason"),
    ),
    (
        "edgeruntime_cron_ticks",
        "Cron ticks handled by this instance by job and status (succeeded, failed, skipped).",
        ("cron", "status"),
    ),
)

#: Histogram upper bounds, +Inf last: `bisect_left` gives the bucket an observation falls in
#: (the first bound >= the value, as Prometheus' `le` means).
_UPPER_BOUNDS = (*DURATION_BUCKETS_SEC, float("inf"))
_FIRST_BOUND = _UPPER_BOUNDS[0]


@functools.cache
def _bucket_labels() -> tuple[str, ...]:
    """The `le` labels, spelt as prometheus_client's own histograms spell them (`1.0`, `+Inf`)."""
    from prometheus_client.utils import floatToGoString

    return tuple(floatToGoString(bound) for bound in _UPPER_BOUNDS)  # type: ignore[no-untyped-call]


#: Index of the sum of observations in a request cell, after one count per bucket.
_SUM = len(_UPPER_BOUNDS)
_REQUEST_ZEROS: tuple[float, ...] = (0,) * _SUM + (0.0,)
_TASK_ZEROS: tuple[float, ...] = (0,)


class _Series:
    """Every label set seen so far of one hot-path metric, with its cell and creation time.

    `cells` maps the raw key the hot path builds (values as the records carry them) to the
    cell, so the hot path converts nothing; `by_labels` maps the label values to the same cell,
    so two raw keys with the same labels (an enum and its string, None and "") share one series.
    """

    __slots__ = ("by_labels", "cells", "created")

    def __init__(self) -> None:
        self.cells: dict[tuple[object, ...], list[float]] = {}
        self.by_labels: dict[tuple[str, ...], list[float]] = {}
        self.created: dict[tuple[str, ...], float] = {}

    def cell(self, key: tuple[object, ...], labels: tuple[str, ...], zeros: tuple[float, ...]) -> list[float]:
        """The cell of `labels`, a copy of `zeros` on first use, and remembered under `key`."""
        cell = self.by_labels.get(labels)
        if cell is None:
            cell = self.by_labels[labels] = list(zeros)
            self.created[labels] = time.time()
        self.cells[key] = cell
        return cell

    def count(self, labels: tuple[str, ...]) -> None:
        """One more of `labels` (a counter's series: cells of one count)."""
        cell = self.by_labels.get(labels)
        if cell is None:
            cell = self.cell(labels, labels, _TASK_ZEROS)
        cell[0] += 1


class _AnyName:
    """The `functions` of a `Metrics` that knows no function list: every non-empty name."""

    def __contains__(self, name: object) -> bool:
        return bool(name)


class Metrics(Extension):
    """The metrics of one app (see the module docstring); an extension that only observes."""

    def __init__(self, functions: Container[str] | None = None) -> None:
        self.observe_invocation = self.invocation
        self.observe_background = self.background_task
        self.observe_worker = self.worker_event
        self._functions = functions
        self._served: Container[str] = functions if functions is not None else _AnyName()
        #: The last finished invocation of each function (the dashboard's functions table): kept
        #: here because `invocation` already knows whether the name is a function.
        self.last_invocations: dict[str, Invocation] = {}
        self._counters = _Counters()
        self._request_cells = self._counters.requests.cells
        self._task_cells = self._counters.tasks.cells

    @functools.cached_property
    def _families(self) -> _Families:
        return _Families(self._counters)

    @property
    def registry(self) -> CollectorRegistry:
        """The registry holding every metric of this app (made on first use, as prometheus_client is imported)."""
        return self._families.registry

    @property
    def functions(self) -> Container[str] | None:
        """Known function names (a live container); others count as `_unknown`. None: every name."""
        return self._functions

    def _function(self, name: str) -> str:
        return name if name in self._served else UNKNOWN_FUNCTION

    # -- what the runtime reports ------------------------------------------------------------

    def invocation(self, record: Invocation) -> None:
        """One finished invocation (an `EdgeApp.observers` entry)."""
        # On every request's path, so no prometheus_client call (each takes a lock and several
        # calls): three dict operations and two list updates. Keys hold the served name
        # (`_unknown` otherwise), so requests to random names cannot grow the dicts.
        function = record.function
        if function in self._served:
            self.last_invocations[function] = record
        else:
            function = UNKNOWN_FUNCTION
        cell = self._request_cells.get((function, record.trigger, record.status))
        if cell is None:
            cell = self._request_cell(function, record.trigger, record.status)
        seconds = record.duration_ms / 1000
        if seconds <= _FIRST_BOUND:  # most requests: one comparison is cheaper than a bisect
            cell[0] += 1
        else:
            cell[bisect_left(_UPPER_BOUNDS, seconds)] += 1
        cell[_SUM] += seconds

    def _request_cell(self, function: str, trigger: str, status: int) -> list[float]:
        counters = self._counters
        if function not in counters.duration_created:
            counters.duration_created[function] = time.time()
        return counters.requests.cell((function, trigger, status), (function, trigger, str(status)), _REQUEST_ZEROS)

    def background_task(self, task: BackgroundTask) -> None:
        """One finished wait_until task (an `EdgeApp.background_observers` entry)."""
        function = task.function
        if function not in self._served:
            function = UNKNOWN_FUNCTION
        key = (function, task.outcome, task.cut_reason)
        cell = self._task_cells.get(key)
        if cell is None:
            cell = self._counters.tasks.cell(key, (function, str(task.outcome), task.cut_reason or ""), _TASK_ZEROS)
        cell[0] += 1

    def worker_retired(self, function: str, reason: str) -> None:
        """A worker stopped taking requests (`wall_clock`, `cpu`, `memory`, `reload`)."""
        self._counters.retirements.count((self._function(function), reason))

    def worker_event(self, event: str, function: str, reason: StopReason) -> None:
        """A supervisor's worker observer: "retired" or "ended", with the reason."""
        if event == "retired":
            self.worker_retired(function, reason.key)
        else:
            self.worker_ended(function, str(reason))

    def worker_ended(self, function: str, reason: str) -> None:
        """A worker was ended, with the runtime's shutdown reason (`WallClockTime`, `EarlyDrop`, ...)."""
        self._counters.endings.count((self._function(function), reason))

    def cron_tick(self, run: CronRun) -> None:
        """A cron tick this instance fired or skipped (a `Scheduler.observers` entry)."""
        self._counters.cron_ticks.count((run.cron, str(run.status)))

    def queue(self, stats: QueueStats, now: float) -> None:
        """The queue as the store sees it, set just before a scrape."""
        families = self._families
        for status in ("queued", "running", "succeeded", "failed"):
            families.queue_jobs.labels(status).set(stats.counts.get(status, 0))
        families.queue_depth.set(stats.counts.get("queued", 0))
        oldest = stats.oldest_queued_at
        families.queue_oldest.set(max(0.0, now - oldest) if oldest is not None else 0.0)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        from prometheus_client.exposition import generate_latest

        data: bytes = generate_latest(self.registry)
        return data

    # -- several serving processes -------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """This process's counters and histograms as plain data (JSON), for another to add up.

        One entry per metric family: ``{"name", "type", "help", "samples": [[name, labels, value], ...]}``.
        The gauges are left out: they say what the store holds, not what a process counted.
        """
        return [
            {
                "name": family.name,
                "type": family.type,
                "help": family.documentation,
                "samples": [[sample.name, sample.labels, sample.value] for sample in family.samples],
            }
            for family in self.registry.collect()
            if family.type in _SUMMED_TYPES
        ]

    def render_gathered(self, snapshots: Iterable[list[dict[str, Any]]]) -> bytes:
        """The exposition of the sum of `snapshots` (every serving process's, this one's included),
        with this process's gauges (the queue as the store holds it)."""
        from prometheus_client.exposition import generate_latest
        from prometheus_client.metrics_core import Metric

        merged = merge_snapshots(snapshots)
        registry = self.registry

        class Gathered:
            def collect(self) -> Iterator[Metric]:
                for entry in merged:
                    family = Metric(entry["name"], entry["help"], entry["type"])
                    for name, labels, value in entry["samples"]:
                        family.add_sample(name, labels, value)
                    yield family
                for family in registry.collect():
                    if family.type not in _SUMMED_TYPES:
                        yield family

        data: bytes = generate_latest(Gathered())
        return data


#: The metric types whose samples add up across serving processes.
_SUMMED_TYPES = frozenset({"counter", "histogram"})


def valid_snapshot(data: object) -> bool:
    """Whether `data` has the shape of a :meth:`Metrics.snapshot` (as it arrives from another process)."""
    if not isinstance(data, list):
        return False
    for family in data:
        if not (
            isinstance(family, dict)
            and isinstance(family.get("name"), str)
            and family.get("type") in _SUMMED_TYPES
            and isinstance(family.get("help"), str)
            and isinstance(family.get("samples"), list)
        ):
            return False
        for sample in family["samples"]:
            if not (
                isinstance(sample, list)
                and len(sample) == 3
                and isinstance(sample[0], str)
                and isinstance(sample[1], dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in sample[1].items())
                and isinstance(sample[2], int | float)
                and not isinstance(sample[2], bool)
            ):
                return False
    return True


def merge_snapshots(snapshots: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One snapshot holding the sum of `snapshots`: samples with the same name and labels add up,
    except the `_created` ones, which keep the earliest time. Families and samples keep the order
    in which they first appear."""
    families: dict[str, dict[str, Any]] = {}
    #: family → (sample name, sorted labels) → [sample name, labels as first seen, value]
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], list[Any]]] = {}
    for snapshot in snapshots:
        for family in snapshot:
            name = family["name"]
            if name not in families:
                families[name] = {"name": name, "type": family["type"], "help": family["help"]}
                samples[name] = {}
            seen = samples[name]
            for sample_name, labels, value in family["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                entry = seen.get(key)
                if entry is None:
                    seen[key] = [sample_name, labels, value]
                elif sample_name.endswith("_created"):
                    entry[2] = min(entry[2], value)
                else:
                    entry[2] += value
    return [{**family, "samples": list(samples[name].values())} for name, family in families.items()]


def _created_series_enabled() -> bool:
    # prometheus_client's own metrics leave out the `_created` series when the process disables
    # them (PROMETHEUS_DISABLE_CREATED_SERIES or `disable_created_metrics()`); so do these, to
    # keep one exposition. The flag is not public: if it ever moves, the series stay.
    from prometheus_client import metrics as prometheus_metrics

    return bool(getattr(prometheus_metrics, "_use_created", True))


class _Counters:
    """The counters the runtime adds to (every request, task, worker and cron event), as a registry collector.

    A request cell holds one count per duration bucket, then the sum of durations in seconds:
    the request count of a label set is the sum of its bucket counts, and the histogram of a
    function adds up the cells of its label sets at scrape time. The other cells are [count].
    Worker and cron events are rarer, but counted here too: the first of them would otherwise
    import prometheus_client on the event loop while it serves (tens of milliseconds).
    """

    def __init__(self) -> None:
        self.requests = _Series()
        self.tasks = _Series()
        self.retirements = _Series()
        self.endings = _Series()
        self.cron_ticks = _Series()
        #: When each function's histogram was first observed (its `_created` series).
        self.duration_created: dict[str, float] = {}

    def describe(self) -> list[Metric]:
        """The families without samples: the registry checks their names for duplicates."""
        from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily

        return [
            CounterMetricFamily(*_REQUESTS),
            HistogramMetricFamily(*_DURATION),
            CounterMetricFamily(*_BACKGROUND),
            *(CounterMetricFamily(name, help_text) for name, help_text, _ in _EVENTS),
        ]

    def collect(self) -> Iterator[Metric]:
        """The request, duration and background task metric families, as counted so far."""
        from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily

        with_created = _created_series_enabled()
        requests = CounterMetricFamily(*_REQUESTS, labels=("function", "trigger", "status"))
        histograms: dict[str, list[float]] = {}
        for labels, cell in self.requests.by_labels.items():
            created = self.requests.created[labels] if with_created else None
            requests.add_metric(labels, sum(cell[:_SUM]), created=created)
            if labels[1] in _UNTIMED_TRIGGERS:
                continue
            total = histograms.get(labels[0])
            if total is None:
                histograms[labels[0]] = list(cell)
            else:
                for i, value in enumerate(cell):
                    total[i] += value
        yield requests

        duration = HistogramMetricFamily(*_DURATION, labels=("function",))
        for function, total in histograms.items():
            cumulative, buckets = 0.0, []
            for label, count in zip(_bucket_labels(), total, strict=False):
                cumulative += count
                buckets.append((label, cumulative))
            duration.add_metric((function,), buckets, total[_SUM])
            if with_created:
                duration.add_sample(_DURATION[0] + "_created", {"function": function}, self.duration_created[function])
        yield duration

        tasks = CounterMetricFamily(*_BACKGROUND, labels=("function", "outcome", "reason"))
        for labels, cell in self.tasks.by_labels.items():
            tasks.add_metric(labels, cell[0], created=self.tasks.created[labels] if with_created else None)
        yield tasks

        for (name, help_text, label_names), series in zip(
            _EVENTS, (self.retirements, self.endings, self.cron_ticks), strict=True
        ):
            family = CounterMetricFamily(name, help_text, labels=label_names)
            for labels, cell in series.by_labels.items():
                family.add_metric(labels, cell[0], created=series.created[labels] if with_created else None)
            yield family


class _Families:
    """The registry of one `Metrics` and prometheus_client's own metrics in it.

    Made on the first scrape or event that needs them, not with the app: importing
    prometheus_client is a tenth of the server's start, and no request needs it.
    """

    def __init__(self, counters: _Counters) -> None:
        from prometheus_client import CollectorRegistry, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(counters)
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
