"""The durable job queue: `enqueue`, and the runner that delivers due jobs.

Delivery is at-least-once. A runner leases a batch of due jobs (`attempt` goes up by one), keeps
the leases alive with a heartbeat, and finishes each attempt fenced by its number: a runner whose
lease expired and whose job was re-claimed elsewhere cannot overwrite the newer attempt. A failed
attempt is retried after `min(cap, base * 2**(n-1))` seconds ± jitter; after the last one the job
moves to failed jobs with its payload, the error and the last response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from edgeruntime.core import context
from edgeruntime.exceptions import JobsError
from edgeruntime.functions.slug import is_valid_slug
from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.clock import Clock, SystemClock
from edgeruntime.jobs.config import MAXIMUMS, JobsConfig
from edgeruntime.jobs.delivery import deliver
from edgeruntime.jobs.outage import Outage, describe, escaped, store_unavailable
from edgeruntime.jobs.store import Job, JobStore, Outcome

if TYPE_CHECKING:
    from edgeruntime.gateway.app import EdgeApp

__all__ = ["JOB_ID_HEADER", "ATTEMPT_HEADER", "JobQueue", "JobResult", "QueueRunner", "backoff", "enqueue"]

logger = logging.getLogger("edgeruntime.jobs")

JOB_ID_HEADER = "x-edgeruntime-job-id"
ATTEMPT_HEADER = "x-edgeruntime-attempt"
#: How long a finished outcome or a free slot may wait for others to share a store round trip.
BATCH_WAIT_SEC = 0.01
#: Heartbeats per lease: the lease is renewed every `lease_sec / HEARTBEATS_PER_LEASE` seconds, so
#: two beats may be late before it runs out.
HEARTBEATS_PER_LEASE = 3


def backoff(attempt: int, config: JobsConfig, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait before the retry that follows failed attempt `attempt` (1-based)."""
    delay = min(config.backoff_cap_sec, config.backoff_base_sec * 2.0 ** (attempt - 1))
    jitter: float = rng(-config.backoff_jitter, config.backoff_jitter)
    return max(0.0, delay * (1 + jitter))


@dataclass(frozen=True)
class JobResult:
    """One delivery of a job: `status` is succeeded, retrying or failed."""

    job_id: int
    function: str
    attempt: int
    status: str
    http_status: int | None
    error: str | None = None


class JobQueue:
    """Enqueues jobs into one store (what `edgeruntime.jobs.enqueue` calls)."""

    def __init__(self, store: JobStore, config: JobsConfig, clock: Clock) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        #: Called after each enqueue, to wake a local runner at once.
        self.on_enqueue: Callable[[], None] | None = None

    async def enqueue(
        self,
        function: str,
        payload: Any = None,
        *,
        delay: float = 0,
        max_attempts: int | None = None,
        idempotency_key: str | None = None,
    ) -> int:
        if not is_valid_slug(function):
            raise JobsError(f"enqueue: {function!r} is not a function name")
        try:
            body = json.dumps({} if payload is None else payload, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise JobsError(f"enqueue({function!r}): payload is not JSON-serialisable: {exc}") from None
        attempts = self.config.max_attempts if max_attempts is None else max_attempts
        if not isinstance(attempts, int) or isinstance(attempts, bool):
            raise JobsError(f"enqueue({function!r}): max_attempts must be a whole number, got {attempts!r}")
        if attempts < 1:
            raise JobsError(f"enqueue({function!r}): max_attempts must be at least 1, got {attempts}")
        # The bound of `[jobs] max_attempts`: past it the backoff overflows, and the store's integers.
        if attempts > MAXIMUMS["max_attempts"]:
            raise JobsError(
                f"enqueue({function!r}): max_attempts must be at most {MAXIMUMS['max_attempts']}, got {attempts}"
            )
        # NaN broke the store's insert and infinity queued a job that never runs.
        if not isinstance(delay, int | float) or isinstance(delay, bool) or not math.isfinite(delay):
            raise JobsError(f"enqueue({function!r}): delay must be a finite number of seconds, got {delay!r}")
        if delay < 0:
            raise JobsError(f"enqueue({function!r}): delay must not be negative, got {delay}")
        now = self.clock.now()
        job_id = await self.store.enqueue(
            function, body, run_at=now + delay, max_attempts=attempts, idempotency_key=idempotency_key, now=now
        )
        if self.on_enqueue is not None and delay == 0:
            self.on_enqueue()
        return job_id


#: The queues of the jobs systems running in this process (several test clients), in the order
#: they started: `enqueue` uses the last one's (`_active`), whatever order the others stop in.
_running: list[JobQueue] = []
_active: JobQueue | None = None
_lock = threading.Lock()
_fallback: JobQueue | None = None


def activate(queue: JobQueue) -> None:
    """A jobs system started: `enqueue` uses `queue` until it is deactivated or another starts."""
    global _active
    with _lock:
        if not any(q is queue for q in _running):
            _running.append(queue)
        _active = _running[-1]


def deactivate(queue: JobQueue) -> None:
    """A jobs system stopped (or failed to start): `enqueue` uses the queue of the system started
    last that still runs, none once all have stopped."""
    global _active
    with _lock:
        _running[:] = [q for q in _running if q is not queue]
        _active = _running[-1] if _running else None


async def enqueue(
    function: str,
    payload: Any = None,
    *,
    delay: float = 0,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
) -> int:
    """Queue a POST of `payload` (JSON) to `function`; returns the job id once committed.

    The job is delivered at least once, after `delay` seconds, with headers `x-edgeruntime-job-id`
    and `x-edgeruntime-attempt`; a non-2xx answer is retried with backoff up to `max_attempts`
    deliveries (default `[jobs] max_attempts`, 4; 1 to 1000, else `JobsError`). With an
    `idempotency_key` already used, the existing job's id is returned and nothing is queued. Raises
    `StoreUnavailable` (a `JobsError`) when the store cannot be reached or written now, and nothing
    is queued: the call may be retried.
    """
    global _fallback
    queue = _active
    if queue is None and context.server_enqueue is not None:
        # A function in a worker process (process isolation): the server enqueues it.
        return await context.server_enqueue(
            function, payload, delay=delay, max_attempts=max_attempts, idempotency_key=idempotency_key
        )
    if queue is None:
        # A script outside any server opens the store itself.
        url = os.environ.get("EDGERUNTIME_DATABASE_URL")
        if not url:
            raise JobsError("enqueue: no jobs store is running (use edgeruntime serve or EdgeClient)")
        if _fallback is None or _fallback.store.url != url:
            store = open_store(url, source="EDGERUNTIME_DATABASE_URL")
            await store.migrate()
            _fallback = JobQueue(store, JobsConfig(), SystemClock())
        queue = _fallback
    return await queue.enqueue(
        function, payload, delay=delay, max_attempts=max_attempts, idempotency_key=idempotency_key
    )


class QueueRunner:
    """Delivers due jobs through the app: leases, heartbeat, retries, failed jobs."""

    def __init__(
        self,
        app: EdgeApp,
        store: JobStore,
        config: JobsConfig,
        clock: Clock,
        instance_id: str,
        *,
        backoff_scale: float = 1.0,
        held_ticks: Callable[[], Collection[int]] | None = None,
    ) -> None:
        """`held_ticks` gives the ids of the cron ticks this instance runs (its scheduler's
        `held_ticks`): the heartbeat renews their leases with the jobs'."""
        self.app = app
        self.store = store
        self.config = config
        self.clock = clock
        self.instance_id = instance_id
        self.backoff_scale = backoff_scale
        self._in_flight: set[asyncio.Task[None]] = set()
        self._outcomes: list[tuple[Outcome, JobResult]] = []
        #: The jobs this runner holds, by id: from the delivery's start until its outcome is written
        #: or given up (a count, as a job re-claimed here may be delivered twice at once). The
        #: heartbeat renews these leases only, never every job leased to `instance_id`: a claim
        #: whose reply was lost leaves a job leased here that nothing runs.
        self._held: Counter[int] = Counter()
        self._held_ticks: Callable[[], Collection[int]] = held_ticks or tuple
        self._event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.delivered = 0
        # A store that is down or read-only fails every poll: one line when it starts, a reminder
        # a minute, one line when it is back (not a traceback five times a second).
        self._claim_outage = Outage(logger, "jobs: claiming due jobs")
        self._finish_outage = Outage(logger, "jobs: recording job outcomes")
        self._heartbeat_outage = Outage(logger, "jobs: renewing leases (heartbeat)")

    def wake(self) -> None:
        self._event.set()

    def held_jobs(self) -> frozenset[int]:
        """The ids of the jobs this runner is delivering or has outcomes of to write."""
        return frozenset(self._held)

    def _hold(self, job_id: int) -> None:
        self._held[job_id] += 1

    def _release(self, job_id: int) -> None:
        self._held[job_id] -= 1
        if self._held[job_id] <= 0:
            del self._held[job_id]

    async def _deliver(self, job: Job) -> tuple[Outcome, JobResult]:
        headers = {JOB_ID_HEADER: str(job.id), ATTEMPT_HEADER: str(job.attempt)}
        status: int | None = None
        response: str | None = None
        try:
            result = await deliver(self.app, job.function, job.payload.encode(), headers, trigger="queue")
            status, response = result.status, result.body
            error = None if result.ok else result.describe()
        except Exception as exc:  # the gateway maps function errors; this is the runtime failing
            logger.exception("job %d (%s): delivery failed", job.id, job.function)
            error = f"{type(exc).__name__}: {exc}"
        self.delivered += 1
        if error is None:
            return Outcome(job.id, job.attempt, True, status), JobResult(
                job.id, job.function, job.attempt, "succeeded", status
            )
        if job.attempt < job.max_attempts:
            retry_at = self.clock.now() + backoff(job.attempt, self.config) * self.backoff_scale
            logger.warning(
                "job %d (%s) attempt %d/%d failed: %s; retrying",
                job.id,
                job.function,
                job.attempt,
                job.max_attempts,
                error,
            )
            return Outcome(job.id, job.attempt, False, status, response, error, retry_at), JobResult(
                job.id, job.function, job.attempt, "retrying", status, error
            )
        logger.error("job %d (%s) failed after %d attempt(s): %s", job.id, job.function, job.attempt, error)
        return Outcome(job.id, job.attempt, False, status, response, error), JobResult(
            job.id, job.function, job.attempt, "failed", status, error
        )

    async def run_once(self, limit: int | None = None) -> list[JobResult]:
        """Claim the jobs due now, deliver them concurrently and record the outcomes."""
        jobs = await self.store.claim(
            self.instance_id, limit or self.config.concurrency, now=self.clock.now(), lease_sec=self.config.lease_sec
        )
        for job in jobs:
            self._hold(job.id)
        try:
            pairs = await asyncio.gather(*(self._deliver(job) for job in jobs))
            if pairs:
                await self.store.finish([o for o, _ in pairs], now=self.clock.now())
        finally:
            for job in jobs:
                self._release(job.id)
        return [r for _, r in pairs]

    # -- the background loop -------------------------------------------------------------

    def _spawn(self, job: Job) -> None:
        # Held until its outcome is written (`_flush`); a delivery cancelled (at stop) has none.
        self._hold(job.id)

        async def run() -> None:
            outcome = None
            try:
                outcome = await self._deliver(job)
                # Not `self._outcomes.append(await ...)`: that binds the list before the await,
                # and a flush swaps the list meanwhile, which would lose the outcome.
                self._outcomes.append(outcome)
            finally:
                if outcome is None:
                    self._release(job.id)
                self._event.set()

        task = asyncio.get_running_loop().create_task(run(), name=f"edgeruntime-job-{job.id}")
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _flush(self) -> None:
        if not self._outcomes:
            return
        batch, self._outcomes = self._outcomes, []
        kept: list[tuple[Outcome, JobResult]] = []
        outage: Exception | None = None
        try:
            await self.store.finish([o for o, _ in batch], now=self.clock.now())
        except Exception as exc:
            kept, outage = (batch, exc) if store_unavailable(exc) else await self._finish_alone(batch)
        # Written or given up (the kept ones are the batch's tail): their leases are not renewed.
        for outcome, _ in batch[: len(batch) - len(kept)]:
            self._release(outcome.job_id)
        if outage is not None:
            # Kept (and their leases renewed) for the next flush; if the store stays away, the
            # leases run out and the jobs are delivered again (the attempt number then fences
            # these outcomes off).
            self._finish_outage.failed(outage, f"{len(kept)} outcome(s) kept for the next try")
            self._outcomes[:0] = kept
            return
        self._finish_outage.recovered()

    async def _finish_alone(
        self, batch: list[tuple[Outcome, JobResult]]
    ) -> tuple[list[tuple[Outcome, JobResult]], Exception | None]:
        """Write the outcomes of a batch the store refused one at a time (it wrote none of them: one
        transaction), so that one it cannot take never holds back the others.

        An outcome refused on its own is written without its texts (the response body dropped, the
        error escaped to ASCII) so that its job still moves on; refused even so, it is dropped and
        logged. Returns the outcomes to keep for the next flush, from the first the store was
        unavailable for, and that error (none kept: None).
        """
        for i, (outcome, result) in enumerate(batch):
            try:
                await self.store.finish([outcome], now=self.clock.now())
                continue
            except Exception as exc:
                if store_unavailable(exc):
                    return batch[i:], exc
                refused = exc
            bare = _without_texts(outcome)
            if bare is not None:
                try:
                    await self.store.finish([bare], now=self.clock.now())
                except Exception as exc:
                    if store_unavailable(exc):
                        return batch[i:], exc
                else:
                    logger.error(
                        "job %d (%s) attempt %d: the store refused its outcome (%s); recorded without the"
                        " response body and with the error escaped",
                        outcome.job_id,
                        result.function,
                        outcome.attempt,
                        describe(refused),
                    )
                    continue
            # Given up: the heartbeat no longer renews its lease, which runs out; the job is then
            # delivered again (or failed, on its last attempt).
            logger.error(
                "job %d (%s) attempt %d: the store refused its outcome (%s); dropped",
                outcome.job_id,
                result.function,
                outcome.attempt,
                describe(refused),
            )
        return [], None

    async def _loop(self) -> None:
        poll = self.config.poll_interval_ms / 1000
        batch = max(1, self.config.concurrency // 2)
        loop = asyncio.get_running_loop()
        last_claim = last_flush = -math.inf
        while True:
            self._event.clear()
            now = loop.time()
            # Outcomes and claims go to the store in batches: one round trip per half a batch of
            # jobs rather than per job, unless the instance would otherwise sit idle or wait long.
            due = len(self._outcomes) >= batch or not self._in_flight or now - last_flush >= BATCH_WAIT_SEC
            if self._finish_outage.failing:
                due = now - last_flush >= poll  # retried at the poll interval, not every 10 ms
            if due:
                await self._flush()
                last_flush = now
            free = self.config.concurrency - len(self._in_flight)
            claimed: list[Job] = []
            if free > 0 and (free >= batch or now - last_claim >= BATCH_WAIT_SEC):
                last_claim = now
                try:
                    claimed = await self.store.claim(
                        self.instance_id, free, now=self.clock.now(), lease_sec=self.config.lease_sec
                    )
                except Exception as exc:
                    self._claim_outage.failed(exc, f"retrying every {poll:g} s")
                else:
                    self._claim_outage.recovered()
                for job in claimed:
                    self._spawn(job)
            # Wait for a delivery to finish, an enqueue in this process, or the next poll.
            timeout = (
                BATCH_WAIT_SEC if (self._outcomes and not self._finish_outage.failing) or 0 < free < batch else poll
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)

    async def _heartbeat(self) -> None:
        interval = self.config.lease_sec / HEARTBEATS_PER_LEASE
        while True:
            await asyncio.sleep(interval)
            # The jobs and cron ticks this instance runs, and only those (none: no statement).
            try:
                await self.store.heartbeat(
                    self.instance_id,
                    job_ids=list(self._held),
                    tick_ids=list(self._held_ticks()),
                    now=self.clock.now(),
                    lease_sec=self.config.lease_sec,
                )
            except Exception as exc:
                self._heartbeat_outage.failed(exc, f"retrying every {interval:g} s")
            else:
                self._heartbeat_outage.recovered()

    @contextlib.asynccontextmanager
    async def renewing_leases(self) -> AsyncIterator[None]:
        """Renew the leases of the jobs and cron ticks this instance holds while the block runs, as
        the heartbeat of `start` does: for work run without the background loop (`edgeruntime cron
        run`), which would otherwise be taken for lost once its first lease ran out."""
        if self._tasks:  # started: the heartbeat runs already
            yield
            return
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeat(), name="edgeruntime-heartbeat")
        try:
            yield
        finally:
            await _cancel(heartbeat)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._loop(), name="edgeruntime-queue"),
            loop.create_task(self._heartbeat(), name="edgeruntime-queue-heartbeat"),
        ]

    async def stop(self, timeout: float) -> None:
        """Stop claiming; give in-flight deliveries `timeout` seconds, then record what finished.

        The heartbeat keeps their leases alive meanwhile; a delivery still running at the end is
        cancelled and its job re-delivered (by any instance) once the lease runs out.
        """
        tasks, self._tasks = self._tasks, []
        loop_task, heartbeat = (tasks[0], tasks[1]) if tasks else (None, None)
        await _cancel(loop_task)
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=timeout)
            for pending in set(self._in_flight):
                pending.cancel()
        await _cancel(heartbeat)
        await self._flush()


def _without_texts(outcome: Outcome) -> Outcome | None:
    """`outcome` as any store can write it: no response body, the error escaped to printable ASCII
    (a NUL or a lone surrogate as `\\x00`, `\\udc80`); None when it has no text to leave out."""
    if outcome.response is None and outcome.error is None:
        return None
    error = None if outcome.error is None else escaped(outcome.error)
    return replace(outcome, response=None, error=error)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
