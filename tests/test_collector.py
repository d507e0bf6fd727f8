"""The serving process's collector: thresholds, a freeze once serving, young collections paced by the loop."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeruntime.exceptions import UsageError
from edgeruntime.serving import collector
from edgeruntime.serving.collector import (
    FULL_EVERY,
    MIDDLE_INTERVAL_SEC,
    YOUNG_MAX_INTERVAL_SEC,
    YOUNG_MIN_INTERVAL_SEC,
    YOUNG_PAUSE_TARGET_SEC,
    PacedCollector,
    start_collector,
)
from tests.helpers import free_port, run_cli


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Restore the collector as it was: on, unfrozen, the same thresholds."""
    before = gc.get_threshold()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        gc.enable()


async def test_gc_setting_is_validated_and_default_keeps_pythons_thresholds(gc_state: None) -> None:
    before = gc.get_threshold()
    with pytest.raises(UsageError, match="EDGERUNTIME_GC='lots'"):
        start_collector("lots")
    gc.disable()
    assert start_collector("default") is None
    assert gc.isenabled()
    assert gc.get_threshold() == before


def test_gc_thresholds() -> None:
    assert collector.gc_thresholds("") == collector.GC_THRESHOLDS
    assert collector.gc_thresholds("default") is None
    assert collector.gc_thresholds("7,8,9") == (7, 8, 9)
    with pytest.raises(UsageError, match="EDGERUNTIME_GC='1,2'"):
        collector.gc_thresholds("1,2")


@pytest.mark.parametrize("setting", ["99999999999999999999,1,1", "-1,-1,-1", "1,2147483648,1", "700,10,-5"])
def test_thresholds_gc_set_threshold_would_refuse_or_misread_are_refused(setting: str) -> None:
    with pytest.raises(UsageError) as raised:
        collector.gc_thresholds(setting)
    assert str(raised.value) == f"EDGERUNTIME_GC={setting!r}: each threshold is a number from 0 to 2147483647"


def test_the_widest_thresholds_are_taken(gc_state: None) -> None:
    assert collector.gc_thresholds("2147483647,0,0") == (2147483647, 0, 0)
    gc.set_threshold(collector.MAX_THRESHOLD, 0, 0)  # what gc.set_threshold takes, as said


def test_serve_with_a_threshold_out_of_range_exits_2_with_one_line_before_its_banner(hello_dir: Path) -> None:
    setting = "99999999999999999999,1,1"
    r = run_cli(
        "serve", str(hello_dir), "--port", str(free_port()), "--no-watch", env={"EDGERUNTIME_GC": setting}, timeout=30
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Serving functions" not in r.stdout and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.endswith(
        f"edgeruntime: error: EDGERUNTIME_GC={setting!r}: each threshold is a number from 0 to 2147483647\n"
    )


async def test_own_thresholds_turn_the_collector_on_and_freeze_once_serving_without_pacing(
    gc_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collector, "FREEZE_DELAY_SEC", 0.01)
    gc.disable()
    assert start_collector("1000,20,30") is None
    assert gc.isenabled()
    assert gc.get_threshold() == (1000, 20, 30)
    assert gc.get_freeze_count() == 0  # the full collection waits until the server is up
    await asyncio.sleep(0.1)
    assert gc.get_freeze_count() > 0


async def test_default_only_turns_it_on(gc_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "FREEZE_DELAY_SEC", 0.01)
    before = gc.get_threshold()
    gc.disable()
    start_collector("default")
    await asyncio.sleep(0.05)
    assert gc.isenabled()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_the_tuned_default_paces_young_collections_from_the_loop_once_frozen(
    gc_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(collector, "FREEZE_DELAY_SEC", 0.05)
    gc.disable()
    pacer = start_collector("")
    assert pacer is not None
    try:
        assert gc.isenabled() and gc.get_threshold() == collector.GC_THRESHOLDS
        # Not before the freeze: a young collection would walk all of start-up's objects.
        assert not pacer.running and gc.get_freeze_count() == 0
        for _ in range(200):  # the freeze's full collection takes as long as the process has objects
            await asyncio.sleep(YOUNG_MIN_INTERVAL_SEC)
            if pacer.collections[0]:
                break
        assert gc.get_freeze_count() > 0
        assert pacer.running and pacer.collections[0] >= 1
    finally:
        pacer.stop()
    assert not pacer.running
    pacer.start()
    assert not pacer.running  # stopped for good


async def test_a_pacer_stopped_before_the_freeze_never_starts(gc_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "FREEZE_DELAY_SEC", 0.01)
    pacer = start_collector("")
    assert pacer is not None
    pacer.stop()
    for _ in range(200):
        await asyncio.sleep(YOUNG_MIN_INTERVAL_SEC)
        if gc.get_freeze_count():
            break
    await asyncio.sleep(YOUNG_MIN_INTERVAL_SEC * 2)
    assert gc.get_freeze_count() > 0 and not pacer.running and pacer.collections == [0, 0, 0]


class FakeLoop:
    """Records the timers a PacedCollector arms; the test fires them."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.handles: list[Handle] = []

    def call_later(self, delay: float, callback: object) -> Handle:
        self.delays.append(delay)
        self.handles.append(Handle())
        return self.handles[-1]


class Handle:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Paced:
    """A PacedCollector on a fake loop and a fake clock; each collection takes `pause` seconds of it."""

    def __init__(self, pause: float) -> None:
        self.pause = pause
        self.now = 0.0
        self.generations: list[int] = []
        self.loop = FakeLoop()
        self.pacer = PacedCollector(self.loop, collect=self.collect, clock=lambda: self.now)  # type: ignore[arg-type]

    def collect(self, generation: int) -> int:
        self.generations.append(generation)
        self.now += self.pause
        return 0

    def tick(self) -> None:
        """Let the armed timer's delay pass, then fire it."""
        self.now += self.loop.delays[-1]
        self.pacer._tick()


def test_a_long_young_collection_halves_the_interval_a_short_one_doubles_it_within_bounds() -> None:
    paced = Paced(YOUNG_PAUSE_TARGET_SEC * 3)
    paced.pacer.start()
    delays = paced.loop.delays
    assert delays == [YOUNG_MIN_INTERVAL_SEC]
    for _ in range(3):
        paced.tick()
    assert delays[1:] == [YOUNG_MIN_INTERVAL_SEC] * 3  # never below the least interval
    paced.pause = 0.0  # collections of nothing
    for _ in range(8):
        paced.tick()
    assert delays[4:7] == [YOUNG_MIN_INTERVAL_SEC * 2, YOUNG_MIN_INTERVAL_SEC * 4, YOUNG_MIN_INTERVAL_SEC * 8]
    assert delays[-1] == YOUNG_MAX_INTERVAL_SEC  # an idle server wakes at most this often
    paced.pause = YOUNG_PAUSE_TARGET_SEC * 2
    paced.tick()
    assert delays[-1] == YOUNG_MAX_INTERVAL_SEC / 2  # load again: the next one comes sooner
    assert set(paced.generations) == {0}


def test_older_generations_are_collected_on_their_slower_clock() -> None:
    paced = Paced(0.0)
    paced.pacer.start()
    for _ in range(FULL_EVERY * 2):
        paced.now += MIDDLE_INTERVAL_SEC
        paced.tick()
    assert paced.generations == ([1] * (FULL_EVERY - 1) + [2]) * 2
    assert paced.pacer.collections == [0, (FULL_EVERY - 1) * 2, 2]
    paced.tick()
    assert paced.generations[-1] == 0
    paced.pacer.stop()
    assert paced.loop.handles[-1].cancelled


async def test_under_churn_the_young_generation_stays_small_while_tasks_end_as_fast_as_they_start(
    gc_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What pacing is for: tasks that end as fast as new ones start leave the collector's count
    where it was, so without pacing their objects pile up uncollected in the young generation
    (to be walked in one long pause later); paced, each is walked once, a few milliseconds after
    it was made."""

    async def pending(release: asyncio.Event) -> None:
        await release.wait()

    async def churn(rounds: int) -> int:
        """Keep 2000 tasks pending, ending and starting 100 a round; the young generation's size at the end."""
        releases = [asyncio.Event() for _ in range(2000)]
        tasks = [asyncio.ensure_future(pending(r)) for r in releases]
        for _ in range(rounds):
            for release in releases[:100]:
                release.set()
            del releases[:100]
            fresh = [asyncio.Event() for _ in range(100)]
            releases.extend(fresh)
            tasks = [t for t in tasks if not t.done()] + [asyncio.ensure_future(pending(r)) for r in fresh]
            await asyncio.sleep(0.002)
        young = len(gc.get_objects(generation=0))
        for release in releases:
            release.set()
        await asyncio.gather(*tasks)
        return young

    gc.set_threshold(*collector.GC_THRESHOLDS)
    gc.enable()
    gc.collect()
    young_collections = gc.get_stats()[0]["collections"]
    unpaced = await churn(60)
    assert gc.get_stats()[0]["collections"] == young_collections  # the count never reached the threshold
    monkeypatch.setattr(collector, "YOUNG_MAX_INTERVAL_SEC", YOUNG_MIN_INTERVAL_SEC)  # a tick every 10 ms
    pacer = PacedCollector(asyncio.get_running_loop())
    pacer.start()
    try:
        gc.collect()
        paced_young = await churn(60)
    finally:
        pacer.stop()
    assert pacer.collections[0] >= 3
    # Unpaced, every task started in the churn is still young; paced, only the last tick's are.
    assert unpaced > 10_000
    assert paced_young < unpaced / 4
