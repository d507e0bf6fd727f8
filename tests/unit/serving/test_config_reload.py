"""ConfigReloader and watch_config: an edit that does not load is one logged line, the running
configuration is kept, and the watching goes on (later valid edits still apply)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, cast

import pytest

from edgeruntime.config.settings import Settings
from edgeruntime.serving.config_reload import ConfigReloader, watch_config
from tests.helpers import HELLO, write_function


class FakeApp:
    """What ConfigReloader uses of an EdgeApp: the running settings, and reconfigure()."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def reconfigure(self, settings: Settings, reload: Iterable[str] | None = None, *, report: bool = True) -> list[str]:
        self.settings = settings
        return sorted(reload or ())


@pytest.fixture
def project(functions_dir: Path) -> Path:
    write_function(functions_dir, "hello", HELLO)
    (functions_dir.parent / "config.toml").write_text("[functions.hello]\nverify_jwt = true\n", encoding="utf-8")
    return functions_dir


def reloader_for(functions_dir: Path) -> tuple[ConfigReloader, FakeApp]:
    def rebuild(**overrides: Any) -> Settings:
        return Settings.build(functions_dir, environ={}, warn_env=False, **overrides)

    app = FakeApp(rebuild())
    files = [functions_dir.parent / "config.toml", functions_dir / ".env"]
    return ConfigReloader(cast(Any, app), rebuild, files), app


BAD_EDITS: list[tuple[str, bytes, str]] = [
    # (file, content, what the logged line names)
    ("config.toml", b"[functions.hello]\nverify_jwt = false\n# caf\xe9\n", "not UTF-8"),
    ("config.toml", b"\x00\xff\xfe binary", "not UTF-8"),
    ("config.toml", b'[edge_runtime.secrets]\n"A=B" = "x"\n', '[edge_runtime.secrets] "A=B"'),
    (".env", b"'A=B'=x\n", "'A=B'"),
    (".env", b'ER_TEST_NUL="a\x00b"\n', "'ER_TEST_NUL'"),
    ("config.toml", b"[edge_runtime]\nmemory_limit_mb = nan\n", "[edge_runtime] memory_limit_mb"),
    ("config.toml", b"[functions.hello]\nmax_request_body_mb = inf\n", "[functions.hello] max_request_body_mb"),
    ("config.toml", b"[jobs]\nlease_sec = nan\n", "[jobs] lease_sec"),
    ("config.toml", b"[jobs]\nmax_attempts = 99999999999999999999\n", "[jobs] max_attempts"),
    (
        "config.toml",
        b'[cron.d]\nfunction = "hello"\nschedule = "@daily"\nbody = { at = 2024-01-01T00:00:00Z }\n',
        "[cron.d] body.at",
    ),
    ("config.toml", b'[auth]\njwt_secret = ""\n', "[auth] jwt_secret"),
]


@pytest.mark.parametrize(("name", "content", "key"), BAD_EDITS, ids=[f"{e[0]}:{e[2]}" for e in BAD_EDITS])
def test_an_edit_that_does_not_load_is_logged_and_the_running_config_kept(
    project: Path, caplog: pytest.LogCaptureFixture, name: str, content: bytes, key: str
) -> None:
    reloader, app = reloader_for(project)
    running = app.settings
    path = project.parent / name if name == "config.toml" else project / name
    path.write_bytes(content)
    with caplog.at_level(logging.ERROR, logger="edgeruntime"):
        assert reloader.reload([path]) == []
    assert app.settings is running
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(path) in line and key in line
    assert "still serving with the configuration loaded before" in line
    assert "\n" not in line


async def test_the_watcher_goes_on_after_an_edit_it_cannot_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import watchfiles

    config = tmp_path / "config.toml"
    batches = [{(watchfiles.Change.modified, str(config))}, {(watchfiles.Change.modified, str(config))}]

    async def fake_awatch(*paths: str, **options: Any) -> AsyncIterator[set[tuple[watchfiles.Change, str]]]:
        for batch in batches:
            yield batch

    monkeypatch.setattr(watchfiles, "awatch", fake_awatch)
    seen: list[set[Path]] = []

    def reload(changed: set[Path]) -> None:
        seen.append(changed)
        if len(seen) == 1:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    with caplog.at_level(logging.ERROR, logger="edgeruntime"):
        await asyncio.wait_for(watch_config([config], reload, asyncio.Event()), timeout=5)
    assert seen == [{config}, {config}]  # the second edit was still applied
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert str(config) in line and "UnicodeDecodeError" in line and "still serving" in line


def warnings_in(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_functions_block_with_no_function_is_one_warning_while_it_stays(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = project.parent / "config.toml"
    config.write_text("[functions.hello]\nverify_jwt = true\n[functions.old]\nverify_jwt = false\n", encoding="utf-8")
    reloader, app = reloader_for(project)  # `old` was said at start: not again
    config.write_text(config.read_text() + "[functions.helo]\nverify_jwt = false\n", encoding="utf-8")
    reloader.reload([config])
    assert "functions.helo.verify_jwt" in " ".join(caplog.messages)  # the edit applied
    line = f"{config}: [functions.helo]: no function 'helo' in {project.resolve()}; did you mean 'hello'?"
    assert warnings_in(caplog) == [line]
    caplog.clear()
    config.write_text(config.read_text().replace("verify_jwt = true", "verify_jwt = false"), encoding="utf-8")
    reloader.reload([config])  # another edit: the block still has no function, said already
    assert warnings_in(caplog) == []
    write_function(project, "helo", HELLO)  # the function added while serving: nothing to say
    reloader.reload([config])
    assert warnings_in(caplog) == []
    shutil.rmtree(project / "helo")  # gone again: said again at the next load
    reloader.reload([config])
    assert warnings_in(caplog) == [line]


def test_an_env_file_line_that_cannot_be_parsed_is_one_warning_while_it_stays(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reloader, app = reloader_for(project)
    env = project / ".env"
    env.write_text("ER_TEST_A=1\nER_TEST_B 2\n", encoding="utf-8")
    reloader.reload([env])  # caplog has every logger's lines: python-dotenv's own would be one
    assert app.settings.env["ER_TEST_A"] == "1"
    assert warnings_in(caplog) == [f"{env}: line 2: cannot be parsed (expected NAME=VALUE), skipping it"]
    caplog.clear()
    env.write_text("ER_TEST_A=2\nER_TEST_B 2\n", encoding="utf-8")
    reloader.reload([env])
    assert app.settings.env["ER_TEST_A"] == "2"
    assert warnings_in(caplog) == []


def test_a_reload_not_reported_applies_the_edit_and_logs_nothing(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # What a serving process of several does when another one reports the edit.
    reloader, app = reloader_for(project)
    config = project.parent / "config.toml"
    config.write_text("[functions.hello]\nverify_jwt = false\n[functions.helo]\nverify_jwt = false\n", encoding="utf-8")
    assert reloader.reload([config], report=False) == []
    assert not app.settings.verify_jwt("hello")  # applied
    config.write_text("[functions.hello]\nwall_clock_limit_sec = -5\n", encoding="utf-8")
    assert reloader.reload([config], report=False) == []  # refused, and the running config kept
    assert not app.settings.verify_jwt("hello")
    assert caplog.messages == []
    config.write_text("[functions.hello]\nverify_jwt = true\n[functions.helo]\nverify_jwt = false\n", encoding="utf-8")
    reloader.reload([config])  # reported: what is still wrong was said by the one that reported it
    assert warnings_in(caplog) == []
    assert [m for m in caplog.messages if "configuration reloaded" in m] == [
        f"configuration reloaded ({config} changed): functions.hello.verify_jwt; no function reloaded"
    ]
