"""Run every fake until interrupted, to try the examples offline by hand.

    python -m tests.fakes --env-file .fakes.env &
    set -a; . ./.fakes.env; set +a
    edgeruntime serve functions

The env file points SUPABASE_URL, SENDGRID_API_URL, POSTHOG_HOST and STRIPE_API_BASE at the fakes
(it is written once they listen) and holds the keys they accept.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from edgeruntime.config.keys import demo_keys
from edgeruntime.config.project import DEFAULT_JWT_SECRET
from tests.fakes import FakePostHog, FakeSendGrid, FakeStripe, FakeSupabase

STRIPE_SECRET_KEY = "sk_test_offline"
STRIPE_WEBHOOK_SECRET = "whsec_offline"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes", description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=Path(".fakes.env"), help="where to write the env")
    args = parser.parse_args(argv)
    keys = demo_keys(DEFAULT_JWT_SECRET)
    supabase = FakeSupabase(api_keys={keys.anon_key, keys.service_role_key})
    sendgrid, posthog, stripe_api = FakeSendGrid(), FakePostHog(), FakeStripe(api_key=STRIPE_SECRET_KEY)
    fakes = (supabase, sendgrid, posthog, stripe_api)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    for fake in fakes:
        fake.start()
    try:
        env = {
            "SUPABASE_URL": supabase.url,
            "SENDGRID_API_URL": sendgrid.url,
            "SENDGRID_API_KEY": sendgrid.api_key,
            "POSTHOG_HOST": posthog.url,
            "POSTHOG_API_KEY": "phc_offline",
            "STRIPE_API_BASE": stripe_api.url,
            "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY,
            "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        }
        args.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()), encoding="utf-8")
        print(f"fakes listening; env written to {args.env_file}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        for fake in fakes:
            fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
