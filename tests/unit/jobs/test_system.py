"""The jobs system of one app: `prepare` migrates before the server listens, `start` not again."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeruntime.config.settings import Settings
from edgeruntime.exceptions import ConfigError
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.jobs.system import attach


async def test_prepare_migrates_once_for_the_whole_start(
    hello_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = EdgeApp(Settings.build(hello_dir, database_url=f"sqlite:///{tmp_path / 'jobs.db'}", watch=False))
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
    system = attach(EdgeApp(Settings.build(hello_dir, database_url=url, watch=False)), background=False)
    with pytest.raises(ConfigError, match=r"^database .*jobs\.db"):
        await system.prepare()
    await system.store.close()
