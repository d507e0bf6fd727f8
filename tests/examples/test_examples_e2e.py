"""The bundled examples on a real socket: `edgeruntime serve functions` with every service faked locally."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import httpx
import pytest
from supabase import create_client

from tests.examples.conftest import REPO
from tests.examples.test_stripe_webhook import CHECKOUT, signed
from tests.fakes import FakeSendGrid, FakeSupabase
from tests.helpers import KEYS, ServerProcess, run_cli

pytestmark = pytest.mark.e2e

EXAMPLES = (
    "analytics",
    "basic-background",
    "batch",
    "contact-form",
    "hello",
    "my-new-job",
    "parallel-tasks",
    "retry",
    "safe-background",
    "sequential-tasks",
    "stripe-webhook",
    "tracked-job",
    "websocket-echo",
    "websocket-relay",
)
#: What the docstring of an example that ports no seed document quotes of the TypeScript it ports.
GUIDE_QUOTES = {"websocket-echo": "Deno.upgradeWebSocket(req)", "websocket-relay": "new RealtimeClient("}


def test_serve_the_examples(
    project_copy: Path, example_env: dict[str, str], supabase_rest: FakeSupabase, sendgrid: FakeSendGrid
) -> None:
    supabase_rest.seed("tasks", [{"id": 1, "owner": "ada", "due_date": "2025-01-10T00:00:00.000Z", "reminded": False}])
    supabase_rest.seed("orders", [{"id": 42, "status": "pending"}])
    with ServerProcess(project_copy, "--no-watch", env=example_env) as server:
        for name in EXAMPLES:
            assert f" - {server.url(name)}" in server.output, name

        # The job guide's "Local Testing" curl, with the local anon key.
        r = httpx.post(
            server.url("my-new-job"),
            headers={"Authorization": f"Bearer {KEYS.anon_key}", "Content-Type": "application/json"},
            content=json.dumps({"executedAt": "2025-01-15T10:00:00Z"}),
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["results"]["records_processed"] == 1
        assert supabase_rest.rows("tasks")[0]["reminded"] is True

        # The guide's "Production Testing": the real supabase client's functions.invoke.
        supabase = create_client(server.base_url, KEYS.anon_key)
        data = supabase.functions.invoke("my-new-job", invoke_options={"body": {"executedAt": "2025-01-16T10:00:00Z"}})
        assert isinstance(data, bytes)
        assert json.loads(data) == {
            "success": True,
            "results": {"records_processed": 0, "reminded": 0, "per_owner": {}},
        }

        # And from the shell, `edgeruntime invoke` against the running server.
        done = run_cli(
            "invoke",
            "my-new-job",
            "--data",
            '{"executedAt": "2025-01-16T10:00:00Z"}',
            "--url",
            server.base_url,
            "--directory",
            str(project_copy),
        )
        assert done.returncode == 0, done.stderr
        assert '"success":true' in done.stdout.replace(" ", "")

        # Stripe calls the webhook without a JWT; the order is updated after the response.
        r = httpx.post(server.url("stripe-webhook"), content=CHECKOUT, headers={"stripe-signature": signed(CHECKOUT)})
        assert r.status_code == 200 and r.json() == {"received": True}
        supabase_rest.wait_for(lambda: supabase_rest.rows("orders")[0]["status"] == "paid")
        r = httpx.post(server.url("stripe-webhook"), content=CHECKOUT, headers={"stripe-signature": "t=1,v1=00"})
        assert (r.status_code, r.text) == (400, "Invalid signature")

        # The contact form answers, then mails in the background.
        r = httpx.post(
            server.url("contact-form"),
            headers={"Authorization": f"Bearer {KEYS.anon_key}"},
            json={"email": "ada@example.com", "name": "Ada", "message": "Hi"},
        )
        assert r.status_code == 200
        sendgrid.wait_for(lambda: "ada@example.com" in sendgrid.recipients())
        assert server.terminate() == 0


def test_make_serve_command_lists_every_example(project_copy: Path) -> None:
    """What `make serve` runs (`edgeruntime serve functions`), from the project directory, with no env at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPABASE_", "SENDGRID_", "POSTHOG_", "STRIPE_"))}
    with ServerProcess(project_copy, "--no-watch", cwd=project_copy.parent, env=env) as server:
        r = httpx.get(server.url("hello"), headers={"Authorization": f"Bearer {KEYS.anon_key}"})
        assert r.status_code == 200
        for name in EXAMPLES:
            assert server.url(name) in server.output


def test_every_function_has_a_test_module() -> None:
    functions = sorted(p.name for p in (REPO / "functions").iterdir() if (p / "index.py").is_file())
    assert tuple(functions) == EXAMPLES
    for name in functions:
        assert (REPO / "tests" / "examples" / f"test_{name.replace('-', '_')}.py").is_file(), name


def test_every_seed_example_quotes_the_typescript_it_ports() -> None:
    for name in EXAMPLES:
        if name == "hello":
            continue
        source = (REPO / "functions" / name / "index.py").read_text(encoding="utf-8")
        docstring = ast.get_docstring(ast.parse(source)) or ""
        assert "TypeScript original" in docstring, name
        if name in GUIDE_QUOTES:
            assert GUIDE_QUOTES[name] in docstring, name
        else:
            assert "EdgeRuntime.waitUntil(" in docstring or "serve(async (req)" in docstring, name
