"""Boot time of a worker process in each sandbox: the median of N boots of the hello function.

A boot is what a request waits for when it finds no worker: from starting the process (under
bubblewrap, ``bwrap`` and the worker it starts) to the worker's "booted" answer once the
function is loaded. Each worker is ended before the next boots. A mode that cannot work on this
machine is reported and skipped.

    python -m benchmarks sandbox [--boots 20] [--modes none,basic,uid,bwrap]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from pathlib import Path

from edgeruntime.config.settings import Settings
from edgeruntime.core.events import StopReason
from edgeruntime.exceptions import ConfigError
from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.workers.process.parent import ProcessWorker
from edgeruntime.workers.process.sandbox import WorkerLauncher, function_env, sandbox_for

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = ROOT / "functions"


async def boot_times(modes: list[str], boots: int) -> dict[str, list[float] | str]:
    """Milliseconds of each of `boots` boots of `hello` per sandbox mode, or why a mode is unavailable.

    The modes take turns, boot after boot, so that a change in the machine's load meanwhile
    weighs on all of them alike.
    """
    workers: dict[str, tuple[Settings, WorkerLauncher]] = {}
    results: dict[str, list[float] | str] = {}
    for mode in modes:
        settings = Settings.build(FUNCTIONS, isolation="process", sandbox=mode, watch=False)
        try:
            workers[mode] = (settings, WorkerLauncher(sandbox_for(settings), settings.functions_dir))
        except ConfigError as exc:
            results[mode] = f"unavailable here: {exc}"
    times: dict[str, list[float]] = {mode: [] for mode in workers}
    for _ in range(boots):
        for mode, (settings, launcher) in workers.items():
            spec = FunctionSpec("hello", settings.functions_dir / "hello")
            env = function_env(settings, launcher.sandbox)
            worker = ProcessWorker(spec, env, settings.limits_for("hello"), launcher=launcher)
            started = time.perf_counter()
            await worker.start()
            times[mode].append((time.perf_counter() - started) * 1000)
            await worker.end(StopReason.TERMINATION)
    results.update(times)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks sandbox")
    parser.add_argument("--boots", type=int, default=20)
    parser.add_argument("--modes", default="none,basic,uid,bwrap")
    args = parser.parse_args(argv)
    logging.getLogger("edgeruntime").setLevel(logging.WARNING)
    print(f"worker boot time, hello, median of {args.boots} boots")
    results = asyncio.run(boot_times(args.modes.split(","), args.boots))
    for mode, times in results.items():
        if isinstance(times, str):
            print(f"  {mode:<6} {times}")
        else:
            print(
                f"  {mode:<6} median {statistics.median(times):6.1f} ms"
                f"  (min {min(times):.1f}, max {max(times):.1f})"
            )
    return 0
