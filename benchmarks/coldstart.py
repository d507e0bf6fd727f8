"""Cold start with 20 functions, taken apart: where edgeruntime's start goes beside bare Starlette's.

`benchmarks peers` prints one figure for issue 18's goal (exec to the first 200, edgeruntime with
20 functions against bare Starlette on the same server). This benchmark measures the same thing
over more starts, then starts edgeruntime once more with its start taken apart from inside:

- the time to import each group of modules (``python -X importtime``: edgeruntime, the servers,
  Starlette, the standard library, the rest), self time summed, so a module counts once;
- the classes `dataclasses` made and the time it took, by module: in Python 3.11 each frozen
  dataclass has six methods written as source text and compiled one by one.

Both readings are taken in one start, under importtime's own overhead: compare their shares, not
their sum with the wall-clock figures. Usage::

    python -m benchmarks coldstart [--runs 9] [--server uvicorn]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from benchmarks import peers

#: Run in the measured process (`python -X importtime -c CHILD REPORT ARGS...`): it imports nothing
#: of the benchmarks, so what it imports is what `edgeruntime ARGS...` imports. It times each
#: dataclass made and writes `{module: [classes, seconds]}` to REPORT when the server exits.
CHILD = """
import atexit, dataclasses, json, sys, time
made = {}
original = dataclasses._process_class
def timed(cls, *args, **kwargs):
    started = time.perf_counter()
    try:
        return original(cls, *args, **kwargs)
    finally:
        entry = made.setdefault(cls.__module__, [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - started
dataclasses._process_class = timed
report = sys.argv[1]
atexit.register(lambda: open(report, "w").write(json.dumps(made)))
sys.argv = ["edgeruntime", *sys.argv[2:]]
from edgeruntime.serving.cli import main
sys.exit(main())
"""

_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", re.M)
#: The groups imports are summed in, by top-level package (the rest: stdlib, or "other").
GROUPS = ("edgeruntime", "uvicorn", "hypercorn", "starlette", "uvloop", "httptools", "anyio")


def import_ms_by_group(text: str, stdlib: Iterable[str] = sys.stdlib_module_names) -> dict[str, float]:
    """ms of import self time per group, from the output of ``python -X importtime``."""
    known = frozenset(stdlib)
    totals: dict[str, float] = {}
    for micros, name in _IMPORT_LINE.findall(text):
        top = name.split(".", 1)[0]
        group = top if top in GROUPS else "stdlib" if top.lstrip("_") in known or top in known else "other"
        totals[group] = totals.get(group, 0.0) + int(micros) / 1000
    return totals


def _start_apart(target: peers.Target, argv: list[str]) -> tuple[dict[str, float], float]:
    """Start `target` with `argv` (under ``-X importtime``) until its first 200: (imports, ms)."""
    port = peers.free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            peers.pinned(0, peers.command(dataclasses.replace(target, argv=argv), port)),
            cwd=peers.REPO,
            stdout=log,
            stderr=log,
        )
        try:
            ready_ms = peers.wait_for(f"http://127.0.0.1:{port}{target.hello_path}", proc) * 1000
        finally:
            peers.stop(proc)
        log.seek(0)
        return import_ms_by_group(log.read().decode(errors="replace")), ready_ms


def taken_apart(
    er: peers.Target, bare: peers.Target, directory: Path
) -> tuple[dict[str, float], dict[str, list[float]], float, dict[str, float]]:
    """One start of each app with its imports timed, edgeruntime's dataclasses too.

    (edgeruntime's imports, its dataclasses, its ms to the first 200, bare Starlette's imports.)
    """
    report = directory / "dataclasses.json"
    imports, ready_ms = _start_apart(er, [sys.executable, "-X", "importtime", "-c", CHILD, str(report), *er.argv[3:]])
    made: dict[str, list[float]] = json.loads(report.read_text()) if report.exists() else {}
    bare_imports, _ = _start_apart(bare, [sys.executable, "-X", "importtime", *bare.argv[1:]])
    return imports, made, ready_ms, bare_imports


def _groups(imports: dict[str, float]) -> str:
    return ", ".join(f"{group} {ms:.1f} ms" for group, ms in sorted(imports.items(), key=lambda kv: -kv[1]))


def render(
    server: str,
    times: dict[str, list[float]],
    imports: dict[str, float],
    made: dict[str, list[float]],
    ready: float,
    bare_imports: dict[str, float],
) -> str:
    er, bare = statistics.median(times["er"]), statistics.median(times["bare"])
    runs = len(times["er"])
    lines = [
        f"# cold start, 20 functions, {server}: exec to the first 200, median of {runs} starts each, taking turns",
        f"edgeruntime     {er:6.1f} ms  (min {min(times['er']):.1f}, max {max(times['er']):.1f})",
        f"bare Starlette  {bare:6.1f} ms  (min {min(times['bare']):.1f}, max {max(times['bare']):.1f})",
        f"edgeruntime / bare Starlette = {er / bare:.2f}x (goal <= 1.0x)",
        "",
        f"# one start of each taken apart (python -X importtime; edgeruntime's dataclasses timed, its first 200"
        f" after {ready:.0f} ms)",
        f"edgeruntime's imports, self time: {sum(imports.values()):.1f} ms: {_groups(imports)}",
        f"bare Starlette's imports, self time: {sum(bare_imports.values()):.1f} ms: {_groups(bare_imports)}",
    ]
    classes = sum(int(count) for count, _ in made.values())
    seconds = sum(spent for _, spent in made.values())
    top = sorted(made.items(), key=lambda kv: -kv[1][1])[:8]
    lines.append(
        f"dataclasses made: {classes} in {seconds * 1000:.1f} ms ("
        + ", ".join(f"{module} {int(count)} in {spent * 1000:.1f} ms" for module, (count, spent) in top)
        + (", ..." if len(made) > len(top) else "")
        + ")"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks coldstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="starts of each app, taking turns (default 9)")
    parser.add_argument("--server", choices=("uvicorn", "hypercorn"), default="uvicorn")
    args = parser.parse_args(argv)
    peers.byte_compile()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        er, bare = peers.twenty_functions(Path(tmp), args.server)
        times = peers.cold_starts(er, bare, max(1, args.runs))
        imports, made, ready, bare_imports = taken_apart(er, bare, Path(tmp))
    print(render(args.server, times, imports, made, ready, bare_imports))
    print(f"# {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
