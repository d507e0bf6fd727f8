"""The jobs system of one app while it serves: the history size cap is enforced (real time, SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgeruntime.config.settings import Settings
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.jobs.system import attach


async def test_a_size_cap_is_enforced_while_serving(
    hello_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeruntime.jobs import system as system_module
    from edgeruntime.jobs.store import Run

    monkeypatch.setattr(system_module, "TRIM_INTERVAL_SEC", 0.1)
    (hello_dir.parent / "config.toml").write_text("[jobs]\nretention_max_rows = 100\n", encoding="utf-8")
    app = EdgeApp(Settings.build(hello_dir, database_url=f"sqlite:///{tmp_path / 'jobs.db'}", watch=False))
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
