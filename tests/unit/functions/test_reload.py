"""Hot reload's retry loop: a reload failing with an OSError other than running out of descriptors is
said in a line, and the watcher goes on."""

from __future__ import annotations

import asyncio
import errno

import pytest

from edgeruntime.functions import reload


async def test_a_reload_failing_with_an_os_error_is_logged_and_the_watcher_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[set[str]] = []

    def failing(names: set[str]) -> list[str]:
        calls.append(names)
        raise OSError(errno.ELOOP, "Too many levels of symbolic links", "/fns/loop1")

    assert await reload._reload(failing, {"hello"}, asyncio.Event()) == []
    assert calls == [{"hello"}]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"reloading hello failed: [Errno {errno.ELOOP}] Too many levels of symbolic links: '/fns/loop1'"
    ]


async def test_a_reload_that_works_returns_what_it_reloaded() -> None:
    assert await reload._reload(lambda names: sorted(names), {"b", "a"}, asyncio.Event()) == ["a", "b"]
