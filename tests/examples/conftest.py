"""Fixtures for the bundled example functions: the fakes they call and an EdgeClient pointed at them."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import httpx
import pytest

from edgeruntime.testing import EdgeClient
from tests.fakes import FakePostHog, FakeSendGrid, FakeStripe, FakeSupabase
from tests.helpers import KEYS

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = REPO / "functions"
STRIPE_WEBHOOK_SECRET = "whsec_test_0123456789abcdef"
POSTHOG_API_KEY = "phc_test_key"
STRIPE_SECRET_KEY = "sk_test_example"


@pytest.fixture
def supabase_rest() -> Iterator[FakeSupabase]:
    """Supabase REST on a loopback port; it accepts only the project's anon and service role keys."""
    with FakeSupabase(api_keys={KEYS.anon_key, KEYS.service_role_key}) as fake:
        yield fake


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid() as fake:
        yield fake


@pytest.fixture
def posthog() -> Iterator[FakePostHog]:
    with FakePostHog() as fake:
        yield fake


@pytest.fixture
def stripe_api() -> Iterator[FakeStripe]:
    with FakeStripe(api_key=STRIPE_SECRET_KEY) as fake:
        yield fake


@pytest.fixture
def example_env(
    supabase_rest: FakeSupabase, sendgrid: FakeSendGrid, posthog: FakePostHog, stripe_api: FakeStripe
) -> dict[str, str]:
    """The env every example needs, with each external service's base URL pointed at its fake."""
    return {
        "SUPABASE_URL": supabase_rest.url,
        "SUPABASE_ANON_KEY": KEYS.anon_key,
        "SUPABASE_SERVICE_ROLE_KEY": KEYS.service_role_key,
        "SENDGRID_API_URL": sendgrid.url,
        "SENDGRID_API_KEY": sendgrid.api_key,
        "POSTHOG_HOST": posthog.url,
        "POSTHOG_API_KEY": POSTHOG_API_KEY,
        "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "STRIPE_SECRET_KEY": STRIPE_SECRET_KEY,
        "STRIPE_API_BASE": stripe_api.url,
        "RETRY_DELAY_MS": "10",
    }


@asynccontextmanager
async def examples_client(env: dict[str, str], **extra: str) -> AsyncIterator[EdgeClient]:
    """An EdgeClient over the bundled functions (repo `functions/` and `config.toml`) with `env` and `extra`.

    The functions keep one HTTP client per worker (docs/porting.md). A server process that stops
    closes their connections by exiting; this test process goes on, so they are closed here.
    """
    # A developer's own SUPABASE_* variables must not point the examples at a real project.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_")}
    modules: list[ModuleType] = []
    async with EdgeClient(FUNCTIONS, environ={**inherited, **env, **extra}) as edge:
        try:
            yield edge
        finally:
            modules = [w.module for s in edge.app.functions.values() for w in s.workers if w.module]
    await close_worker_clients(modules)


async def close_worker_clients(modules: list[ModuleType]) -> None:
    """Close the module-level clients of these function modules (after their workers ended)."""
    for module in modules:
        http = getattr(module, "http", None)
        if isinstance(http, httpx.AsyncClient):
            await http.aclose()
        stripe_http = getattr(module, "stripe_http", None)
        if stripe_http is not None:
            await stripe_http.close_async()


@pytest.fixture
async def client(example_env: dict[str, str]) -> AsyncIterator[EdgeClient]:
    """The bundled functions served in-process, every external service pointed at its fake."""
    async with examples_client(example_env) as edge:
        yield edge


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A copy of the repo's functions/ and config.toml, for servers whose logs must not land in the repo."""
    project = tmp_path / "project"
    shutil.copytree(FUNCTIONS, project / "functions", ignore=shutil.ignore_patterns("__pycache__", ".env"))
    shutil.copy(REPO / "config.toml", project / "config.toml")
    return project / "functions"
