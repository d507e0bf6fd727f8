"""What JWT verification costs per request, in-process, against the same app with it off.

    python benchmarks/auth_overhead.py [--requests N] [--rounds R]

Prints requests per second for: verify_jwt off; the anon key (verified once, then cached); a new
HS256 token per request; a new ES256 token per request (verified against SUPABASE_JWKS); and each
as a ratio of the verify_jwt-off run measured in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from edgeruntime.config.project import DEFAULT_JWT_SECRET
from edgeruntime.testing import EdgeClient

HELLO = """
from starlette.responses import PlainTextResponse
from edgeruntime import serve

serve(lambda req: PlainTextResponse("ok"))
"""


async def measure(functions: Path, n: int, headers_for: Callable[[int], dict[str, str]], **options: Any) -> float:
    async with EdgeClient(functions, **options) as client:
        await client.invoke("hello", headers=headers_for(0))  # boot outside the timing
        started = time.perf_counter()
        for i in range(n):
            r = await client.invoke("hello", auth=None, headers=headers_for(i))
            if r.status_code != 200:
                raise RuntimeError(f"unexpected {r.status_code}: {r.text}")
        return n / (time.perf_counter() - started)


async def main_async(n: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        functions = Path(tmp) / "functions"
        (functions / "hello").mkdir(parents=True)
        (functions / "hello" / "index.py").write_text(HELLO)
        private = ec.generate_private_key(ec.SECP256R1())
        public = {**json.loads(ECAlgorithm.to_jwk(private.public_key())), "kid": "bench"}
        environ = {**os.environ, "SUPABASE_JWKS": json.dumps({"keys": [public]})}
        exp = int(time.time()) + 3600
        hs = [jwt.encode({"role": "anon", "n": i, "exp": exp}, DEFAULT_JWT_SECRET, "HS256") for i in range(n)]
        es = [jwt.encode({"role": "anon", "n": i, "exp": exp}, private, "ES256", {"kid": "bench"}) for i in range(n)]
        async with EdgeClient(functions) as probe:
            anon = probe.settings.keys.anon_key

        cases: dict[str, tuple[Callable[[int], dict[str, str]], bool]] = {
            "verify_jwt off": (lambda i: {}, True),
            "anon key (cached)": (lambda i: {"Authorization": f"Bearer {anon}"}, False),
            "new HS256 token each request": (lambda i: {"Authorization": f"Bearer {hs[i]}"}, False),
            "new ES256 token each request": (lambda i: {"Authorization": f"Bearer {es[i]}"}, False),
        }
        runs = dict.fromkeys(cases, 0.0)
        for _ in range(rounds):  # interleaved rounds, best of each: the machine is shared and noisy
            for name, (headers_for, off) in cases.items():
                rate = await measure(functions, n, headers_for, no_verify_jwt=off, environ=environ)
                runs[name] = max(runs[name], rate)
    base = runs["verify_jwt off"]
    print(f"{'run':<32} {'req/s':>10} {'vs off':>8}   ({n} requests, best of {rounds} rounds, in-process)")
    for name, rate in runs.items():
        print(f"{name:<32} {rate:>10.0f} {rate / base:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args.requests, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
