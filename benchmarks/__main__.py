"""`python -m benchmarks NAME [options]`: NAME one of BENCHMARKS (default: peers)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = (
    "peers",
    "isolation",
    "jobs",
    "dashboard",
    "metrics",
    "history",
    "path",
    "parts",
    "sandbox",
    "workers",
    "instructions",
    "coldstart",
)


def main() -> int:
    args = sys.argv[1:]
    name = args.pop(0) if args and not args[0].startswith("-") else "peers"
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError:
        print(f"benchmark {name!r} is not available in this checkout", file=sys.stderr)
        return 2
    result: int = module.main(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
