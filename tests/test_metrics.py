"""Prometheus metrics at /_internal/metrics: requests, durations, background tasks, workers, queue, cron."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgeruntime.core.background import BackgroundTask, TaskOutcome
from edgeruntime.dashboard.metrics import (
    DURATION_BUCKETS_SEC,
    UNKNOWN_FUNCTION,
    Metrics,
    merge_snapshots,
    valid_snapshot,
)
from edgeruntime.gateway.extensions import Invocation
from edgeruntime.jobs.scheduler import CronRun
from edgeruntime.jobs.store import QueueStats, TickStatus
from edgeruntime.testing import EdgeClient
from tests.helpers import write_function

BG = """
import asyncio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from edgeruntime import EdgeRuntime, serve

async def fine() -> None:
    await asyncio.sleep(0)

async def broken() -> None:
    raise RuntimeError("no")

async def handler(req: Request):
    if req.query_params.get("fail"):
        return PlainTextResponse("bad", status_code=500)
    EdgeRuntime.wait_until(fine())
    EdgeRuntime.wait_until(broken())
    EdgeRuntime.wait_until(asyncio.sleep(3600))
    return JSONResponse({"ok": True})

serve(handler)
"""


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_metrics_count_requests_durations_background_cron_and_queue(functions_dir: Path) -> None:
    write_function(functions_dir, "bg", BG)
    (functions_dir.parent / "config.toml").write_text(
        '[cron.beat]\nfunction = "bg"\nschedule = "@hourly"\n', encoding="utf-8"
    )
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("bg")).status_code == 200
        assert (await client.invoke("bg", params={"fail": "1"})).status_code == 500
        assert (await client.invoke("nope")).status_code == 404
        await client.trigger_cron("beat")
        await asyncio.sleep(0.05)
        [worker] = client.app.functions["bg"].workers
        worker.state.background.cut("wall_clock", [t for t in worker.state.background.pending if t.name == "sleep"])
        await client.jobs.queue.enqueue("bg", {}, delay=60)
        await client.jobs.queue.enqueue("bg", {})
        client.dashboard.metrics.worker_retired("bg", "cpu")
        client.dashboard.metrics.worker_ended("bg", "early_drop")
        r = await client.request("GET", "/_internal/metrics")
        client.failed.clear()  # the failing background task is expected here
        for task in client.pending():
            task.task.cancel()

    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(r.text)
    assert got[("edgeruntime_requests_total", (("function", "bg"), ("status", "200"), ("trigger", "http")))] == 1
    assert got[("edgeruntime_requests_total", (("function", "bg"), ("status", "500"), ("trigger", "http")))] == 1
    assert got[("edgeruntime_requests_total", (("function", "bg"), ("status", "200"), ("trigger", "cron")))] == 1
    unknown = (("function", UNKNOWN_FUNCTION), ("status", "404"), ("trigger", "http"))
    assert got[("edgeruntime_requests_total", unknown)] == 1
    assert got[("edgeruntime_request_duration_seconds_count", (("function", "bg"),))] == 3
    assert got[("edgeruntime_request_duration_seconds_sum", (("function", "bg"),))] > 0

    def tasks(outcome: str, reason: str = "") -> float:
        key = (("function", "bg"), ("outcome", outcome), ("reason", reason))
        return got.get(("edgeruntime_background_tasks_total", key), 0)

    assert (tasks("completed"), tasks("failed"), tasks("cut", "wall_clock")) == (2, 2, 2)
    assert got[("edgeruntime_cron_ticks_total", (("cron", "beat"), ("status", "succeeded")))] == 1
    assert got[("edgeruntime_worker_retirements_total", (("function", "bg"), ("reason", "cpu")))] == 1
    assert got[("edgeruntime_worker_ends_total", (("function", "bg"), ("reason", "early_drop")))] == 1
    assert got[("edgeruntime_queue_depth", ())] == 2
    assert got[("edgeruntime_queue_jobs", (("status", "queued"),))] == 2
    assert 0 <= got[("edgeruntime_queue_oldest_age_seconds", ())] < 60


def test_each_app_has_its_own_registry() -> None:
    a, b = Metrics({"x"}), Metrics({"x"})
    a.worker_retired("x", "wall_clock")
    a.worker_retired("y", "wall_clock")
    got_a, got_b = samples(a.render().decode()), samples(b.render().decode())
    key = ("edgeruntime_worker_retirements_total", (("function", "x"), ("reason", "wall_clock")))
    assert got_a[key] == 1 and key not in got_b
    assert (
        got_a[("edgeruntime_worker_retirements_total", (("function", UNKNOWN_FUNCTION), ("reason", "wall_clock")))] == 1
    )


async def test_worker_retirements_and_ends_by_reason(functions_dir: Path) -> None:
    """A hot reload retires the worker; its early drop ends it: both are counted with their reason."""
    write_function(
        functions_dir,
        "hello",
        "from starlette.responses import Response\nfrom edgeruntime import serve\nserve(lambda req: Response('hi'))\n",
    )
    async with EdgeClient(functions_dir) as client:
        assert (await client.invoke("hello")).status_code == 200
        client.app.reload({"hello"})
        for _ in range(100):  # the drop runs as its own task
            if client.app.functions["hello"].shutdowns:
                break
            await asyncio.sleep(0.01)
        text = (await client.request("GET", "/_internal/metrics")).text
    assert 'edgeruntime_worker_retirements_total{function="hello",reason="reload"} 1.0' in text
    assert 'edgeruntime_worker_ends_total{function="hello",reason="EarlyDrop"} 1.0' in text


class Reference:
    """The counted metrics as prometheus_client's own labelled metrics record them: the oracle."""

    def __init__(self, functions: set[str]) -> None:
        self.functions = functions
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "edgeruntime_requests",
            "Finished invocations by function, trigger (http, cron, queue, websocket: one per connection)"
            " and HTTP status.",
            ["function", "trigger", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "edgeruntime_request_duration_seconds",
            "Invocation duration by function, from arrival to the end of the response"
            " (WebSocket connections excluded).",
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

    def _function(self, name: str) -> str:
        return name if name in self.functions else UNKNOWN_FUNCTION

    def worker_retired(self, function: str, reason: str) -> None:
        self.retirements.labels(self._function(function), reason).inc()

    def worker_ended(self, function: str, reason: str) -> None:
        self.endings.labels(self._function(function), reason).inc()

    def cron_tick(self, cron: str, status: str) -> None:
        self.cron_ticks.labels(cron, status).inc()

    def invocation(self, record: Invocation) -> None:
        function = self._function(record.function)
        self.requests.labels(function, record.trigger, str(record.status)).inc()
        if record.trigger != "websocket":  # a connection lasts as long as it is open
            self.duration.labels(function).observe(record.duration_ms / 1000)

    def background_task(self, task: BackgroundTask) -> None:
        self.background.labels(self._function(task.function), str(task.outcome), task.cut_reason or "").inc()


def invocation(function: str, duration_ms: float, status: int = 200, trigger: str = "http") -> Invocation:
    return Invocation(function, trigger, "id", "GET", f"/functions/v1/{function}", status, 0.0, duration_ms)


def task(function: str, outcome: TaskOutcome, cut_reason: str | None = None) -> BackgroundTask:
    never_awaited: Any = None
    return BackgroundTask(never_awaited, "work", function, "id", outcome=outcome, cut_reason=cut_reason)


#: Durations on, just below and just above bucket bounds, and beyond the last one.
EDGE_DURATIONS_MS = (0.0, 0.4, 4.999, 5.0, 5.0001, 10.0, 24.9, 100.0, 999.0, 1000.0, 4000.0, 400_000.0, 500_000.0)


@pytest.mark.parametrize("created_series", [True, False])
def test_exposition_is_what_prometheus_client_metrics_write(
    monkeypatch: pytest.MonkeyPatch, created_series: bool
) -> None:
    """Same names, help, types, labels, buckets, values, order and `_created` series as labelled metrics."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", created_series)
    served = {"a", "b"}
    metrics, reference = Metrics(served), Reference(served)
    records = [invocation("a", ms) for ms in EDGE_DURATIONS_MS]
    records += [invocation("b", 3.3, 500, "cron"), invocation("a", 7.7, trigger="queue"), invocation("b", 12_345.6)]
    records += [invocation("nope", 0.3, 404), invocation("", 0.2, 404), invocation("a", 1.5, 201)]
    records += [invocation("a", 90_000.0, 101, "websocket"), invocation("b", 1.0, 401, "websocket")]
    tasks = [task("a", TaskOutcome.COMPLETED), task("a", TaskOutcome.CUT, "wall_clock"), task("zz", TaskOutcome.FAILED)]
    tasks += [task("a", TaskOutcome.COMPLETED), task("b", TaskOutcome.CUT, "early_drop")]
    for record in records:
        metrics.invocation(record)
        reference.invocation(record)
    for t in tasks:
        metrics.background_task(t)
        reference.background_task(t)

    for function, reason in [("a", "cpu"), ("zz", "wall_clock"), ("a", "cpu"), ("b", "reload")]:
        metrics.worker_retired(function, reason)
        reference.worker_retired(function, reason)
    for function, reason in [("a", "CPUTime"), ("a", "EarlyDrop"), ("nope", "Memory")]:
        metrics.worker_ended(function, reason)
        reference.worker_ended(function, reason)
    for cron, status in [("beat", TickStatus.SUCCEEDED), ("beat", TickStatus.SKIPPED), ("beat", TickStatus.SUCCEEDED)]:
        metrics.cron_tick(CronRun(cron, "key", 0.0, status))
        reference.cron_tick(cron, str(status))

    counted = metrics.render().decode().split("# HELP edgeruntime_queue_jobs")[0]
    assert counted == generate_latest(reference.registry).decode()
    assert ("_created" in counted) is created_series


def test_worker_and_cron_events_are_counted_without_importing_prometheus_client() -> None:
    """The first such event comes while serving: importing prometheus_client then would stall the loop."""
    script = (
        "import sys\n"
        "from edgeruntime.dashboard.metrics import Metrics\n"
        "from edgeruntime.core.events import StopReason\n"
        "m = Metrics({'a'})\n"
        "m.worker_event('retired', 'a', StopReason.CPU)\n"
        "m.worker_event('ended', 'a', StopReason.CPU)\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
        'assert b\'edgeruntime_worker_ends_total{function="a",reason="CPUTime"} 1.0\' in m.render()\n'
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_an_empty_registry_still_describes_every_metric() -> None:
    text = Metrics(set()).render().decode()
    for name in ("edgeruntime_requests_total", "edgeruntime_request_duration_seconds"):
        assert f"# TYPE {name} " in text
    assert "# TYPE edgeruntime_background_tasks_total counter" in text
    assert "edgeruntime_requests_total{" not in text


def test_durations_fall_in_the_first_bucket_they_do_not_exceed() -> None:
    metrics = Metrics({"a"})
    for ms in (5.0, 5.0001, 400_000.0, 400_001.0):
        metrics.invocation(invocation("a", ms))
    got = samples(metrics.render().decode())

    def bucket(le: str) -> float:
        return got[("edgeruntime_request_duration_seconds_bucket", (("function", "a"), ("le", le)))]

    assert (bucket("0.005"), bucket("0.01"), bucket("150.0"), bucket("400.0"), bucket("+Inf")) == (1, 2, 2, 3, 4)
    assert got[("edgeruntime_request_duration_seconds_count", (("function", "a"),))] == 4
    assert got[("edgeruntime_request_duration_seconds_sum", (("function", "a"),))] == pytest.approx(800.0110001)


def test_names_that_are_not_functions_share_one_series_and_no_last_invocation() -> None:
    served = {"a"}
    metrics = Metrics(served)
    for i in range(500):
        metrics.invocation(invocation(f"scan{i}", 0.1, 404))
    metrics.invocation(invocation("a", 0.1))
    served.discard("a")  # a reload removed it: from now on it is not a function
    metrics.invocation(invocation("a", 0.1))
    got = samples(metrics.render().decode())
    assert (
        got[("edgeruntime_requests_total", (("function", UNKNOWN_FUNCTION), ("status", "404"), ("trigger", "http")))]
        == 500
    )
    assert got[("edgeruntime_requests_total", (("function", "a"), ("status", "200"), ("trigger", "http")))] == 1
    assert (
        got[("edgeruntime_requests_total", (("function", UNKNOWN_FUNCTION), ("status", "200"), ("trigger", "http")))]
        == 1
    )
    assert set(metrics.last_invocations) == {"a"}
    assert len([k for k in got if k[0] == "edgeruntime_requests_total"]) == 3


def test_last_invocations_keep_the_latest_record_of_each_function() -> None:
    metrics = Metrics({"a", "b"})
    first, second, other = invocation("a", 1.0), invocation("a", 2.0, 500), invocation("b", 3.0)
    for record in (first, other, second):
        metrics.invocation(record)
    assert metrics.last_invocations == {"a": second, "b": other}


def test_values_with_the_same_labels_count_in_one_series() -> None:
    """An outcome given as its string, a reason None or "", a status as text: one label set each."""
    metrics = Metrics({"a"})
    metrics.background_task(task("a", TaskOutcome.COMPLETED, None))
    metrics.background_task(task("a", TaskOutcome.COMPLETED, ""))
    as_text: Any = "completed"
    metrics.background_task(task("a", as_text))
    status_as_text: Any = "200"
    metrics.invocation(invocation("a", 1.0, status_as_text))
    metrics.invocation(invocation("a", 1.0, 200))
    got = samples(metrics.render().decode())
    assert (
        got[("edgeruntime_background_tasks_total", (("function", "a"), ("outcome", "completed"), ("reason", "")))] == 3
    )
    assert got[("edgeruntime_requests_total", (("function", "a"), ("status", "200"), ("trigger", "http")))] == 2
    assert got[("edgeruntime_request_duration_seconds_sum", (("function", "a"),))] == pytest.approx(0.002)


# -- several serving processes (--workers N) ---------------------------------------------------


def _feed(metrics: Metrics, records: list[Invocation], tasks: list[BackgroundTask]) -> None:
    for record in records:
        metrics.invocation(record)
    for t in tasks:
        metrics.background_task(t)


def test_the_gathered_exposition_is_what_one_process_seeing_everything_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two serving processes' snapshots, summed: the same samples as one Metrics that saw it all."""
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    served = {"a", "b"}
    first, second, everything = Metrics(served), Metrics(served), Metrics(served)
    one = [invocation("a", ms) for ms in EDGE_DURATIONS_MS] + [invocation("b", 3.3, 500, "cron")]
    two = [invocation("a", 7.7, trigger="queue"), invocation("b", 12_345.6), invocation("nope", 0.3, 404)]
    two += [invocation("a", 1.0) for _ in range(5)]
    one_tasks = [task("a", TaskOutcome.COMPLETED), task("a", TaskOutcome.CUT, "wall_clock")]
    two_tasks = [task("a", TaskOutcome.COMPLETED), task("b", TaskOutcome.CUT, "early_drop")]
    _feed(first, one, one_tasks)
    _feed(second, two, two_tasks)
    _feed(everything, one + two, one_tasks + two_tasks)
    for metrics in (first, everything):
        metrics.worker_ended("a", "WallClockTime")
    for metrics in (second, everything):
        metrics.worker_retired("b", "cpu")
    # The snapshots travel as JSON between processes.
    snapshots = [json.loads(json.dumps(m.snapshot())) for m in (first, second)]
    assert all(valid_snapshot(s) for s in snapshots)
    gathered = first.render_gathered(snapshots).decode()
    # (Sums of durations added in another order may differ in the last bit.)
    assert samples(gathered) == pytest.approx(samples(everything.render().decode()), rel=1e-12)
    assert "# TYPE edgeruntime_queue_depth gauge" in gathered


def test_gathered_created_series_keep_the_earliest_time_and_gauges_are_this_processs() -> None:
    early, late = Metrics({"a"}), Metrics({"a"})
    early.invocation(invocation("a", 1.0))
    time.sleep(0.01)
    late.invocation(invocation("a", 1.0))
    late.queue(QueueStats({"queued": 7}, None, ()), time.time())
    early.queue(QueueStats({"queued": 99}, None, ()), time.time())
    got = samples(late.render_gathered([early.snapshot(), late.snapshot()]).decode())
    key = ("edgeruntime_requests_created", (("function", "a"), ("status", "200"), ("trigger", "http")))
    assert got[key] == samples(early.render().decode())[key] < samples(late.render().decode())[key]
    assert got[("edgeruntime_requests_total", key[1])] == 2
    # The queue is read from the store by the process that answers the scrape, never added up.
    assert got[("edgeruntime_queue_depth", ())] == 7


def test_merging_adds_snapshots_up_and_keeps_them_unchanged() -> None:
    a = [{"name": "c", "type": "counter", "help": "h", "samples": [["c_total", {"x": "1"}, 2.0]]}]
    b = [
        {
            "name": "c",
            "type": "counter",
            "help": "h",
            "samples": [["c_total", {"x": "1"}, 3.0], ["c_total", {"x": "2"}, 1.0]],
        }
    ]
    merged = merge_snapshots([a, b, []])
    assert merged == [
        {
            "name": "c",
            "type": "counter",
            "help": "h",
            "samples": [["c_total", {"x": "1"}, 5.0], ["c_total", {"x": "2"}, 1.0]],
        }
    ]
    assert a[0]["samples"] == [["c_total", {"x": "1"}, 2.0]]  # not modified
    assert merge_snapshots([merged, merged])[0]["samples"][0][2] == 10.0


@pytest.mark.parametrize(
    "data",
    [
        None,
        {},
        [1],
        [{"name": "c", "type": "gauge", "help": "h", "samples": []}],
        [{"name": "c", "type": "counter", "help": "h", "samples": [["c_total", {"x": 1}, 2.0]]}],
        [{"name": "c", "type": "counter", "help": "h", "samples": [["c_total", {}, "2"]]}],
        [{"name": "c", "type": "counter", "help": "h", "samples": [["c_total", {}, True]]}],
        [{"name": "c", "type": "counter", "help": "h", "samples": [["c_total", {}]]}],
        [{"name": 3, "type": "counter", "help": "h", "samples": []}],
    ],
)
def test_a_malformed_snapshot_is_refused(data: Any) -> None:
    assert not valid_snapshot(data)
