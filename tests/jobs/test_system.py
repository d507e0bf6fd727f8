"""The jobs system of one app: `prepare` migrates before the server listens, `start` not again; the
history size cap is enforced while it serves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeruntime.app import create_app
from edgeruntime.exceptions import ConfigError
from edgeruntime.jobs.system import attach
from edgeruntime.settings import Settings


async def test_prepare_migrates_once_for_the_whole_start(
    hello_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(Settings.build(hello_dir, database_url=f"sqlite:///{tmp_path / 'jobs.db'}", watch=False))
    system = attach(app, background=False)
    migrations: list[str] = []
    migrate = system.store.migrate

    async def counted() -> None:
        migrations.append(system.store.url)
        await migrate()

    monkeypatch.setattr(system.store, "migrate", counted)
    await system.prepare()
    await app.startup()
    try:
        assert len(migrations) == 1
        assert await system.store.count_jobs() == {}
    finally:
        await app.shutdown(timeout=0)


async def test_prepare_fails_on_a_database_that_cannot_be_opened(hello_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    url = f"sqlite:///{tmp_path / 'file' / 'jobs.db'}"
    system = attach(create_app(Settings.build(hello_dir, database_url=url, watch=False)), background=False)
    with pytest.raises(ConfigError, match=r"^database .*jobs\.db"):
        await system.prepare()
    await system.store.close()


async def test_a_size_cap_is_enforced_while_serving(
    hello_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeruntime.jobs import system as system_module
    from edgeruntime.jobs.store import Run

    monkeypatch.setattr(system_module, "TRIM_INTERVAL_SEC", 0.1)
    (hello_dir.parent / "config.toml").write_text("[jobs]\nretention_max_rows = 100\n", encoding="utf-8")
    app = create_app(Settings.build(hello_dir, database_url=f"sqlite:///{tmp_path / 'jobs.db'}", watch=False))
    system = attach(app)
    await app.startup()
    try:
        now = system.clock.now()
        await system.store.record_runs(
            [Run("invocation", "hello", "http", f"e{i}", "succeeded", now, 1.0, 200) for i in range(250)]
        )
        deadline = asyncio.get_running_loop().time() + 10
        runs = await system.store.runs(limit=1000)
        while len(runs) > 100 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            runs = await system.store.runs(limit=1000)
    finally:
        await app.shutdown(timeout=0)
    # Down to 90 % of the cap, the newest kept.
    assert [r.execution_id for r in runs] == [f"e{i}" for i in reversed(range(160, 250))]
