"""Boot time and memory of worker processes in each sandbox, forked from a template or spawned.

A boot is what a request waits for when it finds no worker: from asking for a worker process to
the worker's "booted" answer once the function is loaded. Forked from the function's template
(the default) the template is started once, before the first boot (its start is reported on its
own); spawned, each boot starts a fresh interpreter (under bubblewrap, ``bwrap`` and the worker it
starts). Each worker is ended before the next boots; the modes and the two ways take turns, boot
after boot, so that a change in the machine's load meanwhile weighs on all of them alike. A mode
that cannot work on this machine is reported and skipped.

With ``--workers N``, N workers of hello are then kept alive at once, each way, and their memory
is summed: resident (RSS, which counts the pages a forked worker shares with its template in
full) and proportional (PSS, which splits shared pages between the processes sharing them),
template included.

    python -m benchmarks sandbox [--boots 20] [--modes none,basic,uid,bwrap] [--start template,spawn] [--workers 8]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeruntime.config.settings import Settings
from edgeruntime.core.events import StopReason
from edgeruntime.exceptions import ConfigError
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.workers.process.forking import ForkedProcess
from edgeruntime.workers.process.parent import ProcessWorker
from edgeruntime.workers.process.sandbox import WorkerLauncher, function_env, sandbox_for

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"
STARTS = ("template", "spawn")


@dataclass
class Way:
    """One mode, one way of starting workers: its launcher and what was measured."""

    mode: str
    start: str
    settings: Settings
    launcher: WorkerLauncher
    boots_ms: list[float] = field(default_factory=list)
    template_start_ms: float | None = None

    def worker(self) -> ProcessWorker:
        spec = FunctionSpec("hello", self.settings.functions_dir / "hello")
        env = function_env(self.settings, self.launcher.sandbox)
        return ProcessWorker(spec, env, self.settings.limits_for("hello"), launcher=self.launcher)


def ways(modes: list[str], starts: list[str]) -> tuple[list[Way], dict[str, str]]:
    found: list[Way] = []
    unavailable: dict[str, str] = {}
    for mode in modes:
        settings = Settings.build(FUNCTIONS, isolation="process", sandbox=mode, watch=False)
        try:
            sandbox = sandbox_for(settings)
        except ConfigError as exc:
            unavailable[mode] = f"unavailable here: {exc}"
            continue
        for start in starts:
            launcher = WorkerLauncher(sandbox, settings.functions_dir, templates=start == "template")
            if start == "template" and not launcher.forks:
                unavailable[f"{mode}/template"] = "unavailable here: workers cannot be forked on this system"
                continue
            found.append(Way(mode, start, settings, launcher))
    return found, unavailable


async def boot_times(all_ways: list[Way], boots: int) -> None:
    """Boot hello `boots` times each way (after starting the templates), taking turns."""
    for way in all_ways:
        if way.start == "template":  # the template's own start: once per function, not per boot
            started = time.perf_counter()
            worker = way.worker()
            await worker.start()
            way.template_start_ms = (time.perf_counter() - started) * 1000
            await worker.end(StopReason.TERMINATION)
    for _ in range(boots):
        for way in all_ways:
            worker = way.worker()
            started = time.perf_counter()
            await worker.start()
            way.boots_ms.append((time.perf_counter() - started) * 1000)
            await worker.end(StopReason.TERMINATION)


def _memory_kib(pid: int) -> tuple[int, int]:
    """RSS and PSS of process `pid`, in KiB."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


async def memory(way: Way, count: int) -> tuple[int, int, int]:
    """RSS and PSS (KiB) of `count` live hello workers, their template's included; and the template's own RSS."""
    workers = [way.worker() for _ in range(count)]
    for worker in workers:
        await worker.start()
    await asyncio.sleep(0.5)  # settled
    pids = [w.pid for w in workers if w.pid is not None]
    template_rss = 0
    if isinstance(workers[0].proc, ForkedProcess):
        template = _parent(pids[0])
        template_rss = _memory_kib(template)[0]
        pids.append(template)
    totals = [_memory_kib(pid) for pid in pids]
    for worker in workers:
        await worker.end(StopReason.TERMINATION)
    return sum(r for r, _ in totals), sum(p for _, p in totals), template_rss


async def run(modes: list[str], starts: list[str], boots: int, count: int) -> list[str]:
    all_ways, unavailable = ways(modes, starts)
    lines = [f"worker boot time, hello, median of {boots} boots (load average {os.getloadavg()[0]:.2f})"]
    try:
        await boot_times(all_ways, boots)
        for name, why in unavailable.items():
            lines.append(f"  {name:<15} {why}")
        for way in all_ways:
            times = way.boots_ms
            extra = f"; template start {way.template_start_ms:.1f} ms" if way.template_start_ms is not None else ""
            lines.append(
                f"  {way.mode + '/' + way.start:<15} median {statistics.median(times):6.1f} ms"
                f"  (min {min(times):.1f}, max {max(times):.1f}{extra})"
            )
        if count:
            lines.append(
                f"memory of {count} live hello workers (RSS counts shared pages once per process; PSS splits them)"
            )
            for way in all_ways:
                rss, pss, template_rss = await memory(way, count)
                with_template = f", its template {template_rss / 1024:.1f} MiB RSS included" if template_rss else ""
                lines.append(
                    f"  {way.mode + '/' + way.start:<15} RSS {rss / 1024:7.1f} MiB  PSS {pss / 1024:7.1f} MiB"
                    f"  ({pss / 1024 / count:.1f} MiB PSS per worker{with_template})"
                )
    finally:
        for way in all_ways:
            await way.launcher.close()
    return lines


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sandbox", description=__doc__)
    parser.add_argument("--boots", type=int, default=20)
    parser.add_argument("--modes", default="none,basic,uid,bwrap")
    parser.add_argument("--start", default="template,spawn", help="template, spawn or both (default both)")
    parser.add_argument("--workers", type=int, default=0, help="also measure the memory of this many live workers")
    args = parser.parse_args(argv)
    starts = [s for s in args.start.split(",") if s]
    if not starts or any(s not in STARTS for s in starts):
        parser.error(f"--start: expected template, spawn or both, got {args.start!r}")
    logging.getLogger("edgeruntime").setLevel(logging.WARNING)
    for line in asyncio.run(run(args.modes.split(","), starts, args.boots, args.workers)):
        print(line)
    return 0
