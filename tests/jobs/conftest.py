"""Fixtures of the jobs tests: one store URL per backend, each test isolated.

SQLite: a file in the test's tmp dir. Postgres: a fresh schema on EDGERUNTIME_TEST_DATABASE_URL
(search_path set in the URL), dropped afterwards; skipped when the variable is unset unless
EDGERUNTIME_REQUIRE_POSTGRES=1, which makes it a failure.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

import edgeruntime.jobs.scheduler as scheduler_module
from edgeruntime.jobs.backends import open_store
from edgeruntime.jobs.delivery import Delivery
from edgeruntime.jobs.store import JobStore
from tests.jobs.backends import postgres_url_or_skip
from tests.jobs.proxy import TcpProxy

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A Postgres URL whose search_path is a fresh schema, dropped after the test."""
    import psycopg

    base = postgres_url_or_skip()
    schema = f"edgeruntime_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield _with_search_path(base, schema)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same behavioural tests run on SQLite and on Postgres."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[JobStore]:
    """A migrated store on each backend, closed after the test."""
    s = open_store(store_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


@dataclass(frozen=True)
class ProxiedPostgres:
    """A fresh schema reached directly (`url`) and through a TCP proxy the test can cut (`proxied_url`)."""

    url: str
    proxied_url: str
    proxy: TcpProxy


@pytest.fixture
def proxied_postgres(postgres_url: str) -> Iterator[ProxiedPostgres]:
    parts = urlsplit(postgres_url)
    assert parts.hostname is not None
    with TcpProxy(parts.hostname, parts.port or 5432) as proxy:
        user = parts.netloc.rpartition("@")[0]
        user = f"{user}@" if user else ""
        proxied = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))
        yield ProxiedPostgres(postgres_url, proxied, proxy)


@pytest.fixture
def delivered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every cron delivery answers 200 (no app); the scheduled instants delivered, in order."""
    seen: list[str] = []

    async def fake_deliver(
        app: Any, function: str, body: bytes, headers: Mapping[str, str], *, trigger: str
    ) -> Delivery:
        seen.append(headers[scheduler_module.SCHEDULED_FOR_HEADER])
        return Delivery(200, "ok")

    monkeypatch.setattr(scheduler_module, "deliver", fake_deliver)
    return seen
