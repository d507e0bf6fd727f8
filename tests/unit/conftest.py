"""The unit tier: no sockets, no subprocesses, no sleeping; time is a ManualClock or a FakeClock.

Every test below this directory runs with those refused (a test that tries fails with a line
saying which), so the tier stays fast: `make unit` (or `pytest tests/unit`).
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

_real_asyncio_sleep = asyncio.sleep


def _refuse(what: str) -> Any:
    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"the unit tier does not {what}: move the test to the end-to-end tier, or fake it")

    return refused


async def _no_sleep(delay: float, result: Any = None) -> Any:
    # asyncio.sleep(0) only yields to the event loop; anything longer waits for real time.
    if delay > 0:
        raise AssertionError(f"the unit tier does not sleep (asyncio.sleep({delay})): use a ManualClock")
    return await _real_asyncio_sleep(0, result)


@pytest.fixture(autouse=True)
def _unit_tier_rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _refuse("open sockets"))
    monkeypatch.setattr(socket.socket, "bind", _refuse("open sockets"))
    monkeypatch.setattr(socket, "create_connection", _refuse("open sockets"))
    monkeypatch.setattr(subprocess, "Popen", _refuse("start processes"))
    monkeypatch.setattr(time, "sleep", _refuse("sleep"))
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    yield
