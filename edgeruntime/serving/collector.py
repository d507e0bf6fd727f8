"""The garbage collector of a serving process: tuned for many pending background tasks, paced by its event loop.

Under ``wait_until`` load a server holds tens of thousands of pending tasks, each a score of
objects the collector tracks (its task, coroutines, context, timer, the runtime's record of it).
CPython's collector counts allocations *minus* deallocations: once the tasks end as fast as new
ones start, that count stands still while every new task's objects pile up in the young
generation, and the collection it finally triggers walks all of them at once (tens to hundreds
of milliseconds with the event loop stopped, measured in docs/performance.md). While the tasks
pile up (the first seconds of a burst), each collection at the count threshold walks 100,000
objects: 20-35 ms.

`PacedCollector` runs the young collections from the event loop instead, on a timer that keeps
each one short: every object is still walked once while it is young (the collector's usual
work), in pauses of a millisecond or two rather than a few long ones. Older generations are
collected on a slower clock (`MIDDLE_INTERVAL_SEC`, a full collection every `FULL_EVERY`), so
reference cycles that outlive a young collection are still freed.

``EDGERUNTIME_GC`` chooses: empty (the default) for the tuned thresholds with the paced
collector, ``default`` for Python's own collector untouched, ``gen0,gen1,gen2`` for those
thresholds without pacing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable

from edgeruntime.exceptions import UsageError

__all__ = [
    "FREEZE_DELAY_SEC",
    "FULL_EVERY",
    "GC_THRESHOLDS",
    "MAX_THRESHOLD",
    "MIDDLE_INTERVAL_SEC",
    "PacedCollector",
    "freeze_gc",
    "gc_thresholds",
    "start_collector",
]

#: Collector thresholds of the paced default: Python's own young collection stays as a backstop
#: for a burst between two ticks; the older generations are left to the pacer's clock.
GC_THRESHOLDS = (100_000, 1_000_000, 1_000_000)
#: The largest threshold gc.set_threshold takes (a C int); 0 for gen0 turns automatic collection off.
MAX_THRESHOLD = 2**31 - 1
#: Seconds after the server starts at which the objects alive then are frozen (see `start_collector`).
FREEZE_DELAY_SEC = 1.0
#: Bounds of the interval between two young collections: the shortest under load, the longest
#: when idle (a burst after a quiet spell waits at most this long for its first one).
YOUNG_MIN_INTERVAL_SEC = 0.01
YOUNG_MAX_INTERVAL_SEC = 0.1
#: A young collection longer than this halves the interval to the next; one under a quarter of
#: it doubles the interval (within the bounds above).
YOUNG_PAUSE_TARGET_SEC = 0.002
#: Seconds between two collections of the middle generation (with the young one).
MIDDLE_INTERVAL_SEC = 60.0
#: Every this many middle collections, a full one instead.
FULL_EVERY = 10


def gc_thresholds(setting: str | None = None) -> tuple[int, int, int] | None:
    """The collector thresholds to serve with; None to keep Python's (`EDGERUNTIME_GC=default`).

    `setting` (default: the `EDGERUNTIME_GC` environment variable) is "default", three numbers
    "gen0,gen1,gen2", or empty for GC_THRESHOLDS. UsageError for anything else.
    """
    setting = os.environ.get("EDGERUNTIME_GC", "") if setting is None else setting
    if setting == "default":
        return None
    if not setting:
        return GC_THRESHOLDS
    try:
        gen0, gen1, gen2 = (int(part) for part in setting.split(","))
    except ValueError:
        raise UsageError(f"EDGERUNTIME_GC={setting!r}: expected 'default' or three numbers 'gen0,gen1,gen2'") from None
    if not all(0 <= threshold <= MAX_THRESHOLD for threshold in (gen0, gen1, gen2)):
        raise UsageError(f"EDGERUNTIME_GC={setting!r}: each threshold is a number from 0 to {MAX_THRESHOLD}")
    return gen0, gen1, gen2


def freeze_gc() -> None:
    """Collect once, then exempt every object alive now from later collections (gc.freeze)."""
    gc.collect()
    gc.freeze()


class PacedCollector:
    """Young collections on a timer of the running event loop, each kept short; older ones on a slow clock.

    The interval adapts to the load: a collection over YOUNG_PAUSE_TARGET_SEC halves it (down to
    YOUNG_MIN_INTERVAL_SEC), one well under doubles it (up to YOUNG_MAX_INTERVAL_SEC), so an idle
    server wakes ten times a second for a collection of nothing.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        collect: Callable[[int], object] = gc.collect,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.loop = loop
        self.collect = collect
        self.clock = clock
        #: Seconds until the next young collection.
        self.interval = YOUNG_MIN_INTERVAL_SEC
        #: Collections run so far, by generation.
        self.collections = [0, 0, 0]
        self._next_middle = clock() + MIDDLE_INTERVAL_SEC
        self._handle: asyncio.TimerHandle | None = None
        #: Set by `stop`: a later `start` does nothing.
        self.stopped = False

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        """Collect from now on (the loop's thread)."""
        if self._handle is None and not self.stopped:
            self._handle = self.loop.call_later(self.interval, self._tick)

    def stop(self) -> None:
        self.stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        started = self.clock()
        generation = 0
        if started >= self._next_middle:
            self._next_middle = started + MIDDLE_INTERVAL_SEC
            generation = 2 if (self.collections[1] + self.collections[2] + 1) % FULL_EVERY == 0 else 1
        self.collect(generation)
        self.collections[generation] += 1
        if generation == 0:
            took = self.clock() - started
            if took > YOUNG_PAUSE_TARGET_SEC:
                self.interval = max(YOUNG_MIN_INTERVAL_SEC, self.interval / 2)
            elif took < YOUNG_PAUSE_TARGET_SEC / 4:
                self.interval = min(YOUNG_MAX_INTERVAL_SEC, self.interval * 2)
        self._handle = self.loop.call_later(self.interval, self._tick)


def start_collector(setting: str) -> PacedCollector | None:
    """Turn the collector on for a server about to listen, tuned as `setting` says (see `gc_thresholds`).

    The objects alive once the server is up are frozen (moved out of the collector's way)
    FREEZE_DELAY_SEC after it starts: the collection before the freeze walks everything start-up
    built (~10 ms on a 2-core machine, the collector being off while the server starts), and
    the server answers its first requests sooner when that happens once it is up. With the
    default (empty) setting the young collections are then paced by the running loop (the
    PacedCollector returned, which starts with the freeze: a young collection before it would
    walk all of start-up's objects too); with thresholds of one's own they are not. With
    "default" the collector is only turned on.
    """
    thresholds = gc_thresholds(setting)
    pacer = None
    if thresholds is not None:
        gc.set_threshold(*thresholds)
        loop = asyncio.get_running_loop()
        if setting:
            loop.call_later(FREEZE_DELAY_SEC, freeze_gc)
        else:
            pacer = PacedCollector(loop)
            loop.call_later(FREEZE_DELAY_SEC, _freeze_then_pace, pacer)
    gc.enable()
    return pacer


def _freeze_then_pace(pacer: PacedCollector) -> None:
    freeze_gc()
    if not pacer.stopped:
        pacer.start()
