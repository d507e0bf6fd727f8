from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeruntime.core import descriptors
from tests.helpers import HELLO, write_function


@pytest.fixture
def functions_dir(tmp_path: Path) -> Path:
    """An empty functions directory inside a project directory (config.toml goes in its parent)."""
    path = tmp_path / "project" / "functions"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def hello_dir(functions_dir: Path) -> Path:
    """A functions directory holding one function, `hello`."""
    write_function(functions_dir, "hello", HELLO)
    return functions_dir


@pytest.fixture(autouse=True)
def _edgeruntime_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    # Tests read the runtime's records through caplog; a test that runs `serve` in-process
    # reconfigures logging and stdout, which is undone afterwards.
    loggers = [logging.getLogger(name) for name in ("edgeruntime", "_edgeruntime_functions")]
    saved = [(lg, lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    stdout, stderr = sys.stdout, sys.stderr
    for lg in loggers:
        lg.propagate = True
    caplog.set_level(logging.INFO)
    yield
    sys.stdout, sys.stderr = stdout, stderr
    for lg, handlers, propagate, level in saved:
        lg.handlers[:] = handlers
        lg.propagate = propagate
        lg.setLevel(level)


@pytest.fixture(autouse=True)
def _fresh_exhaustion_log(monkeypatch: pytest.MonkeyPatch) -> None:
    # The out-of-descriptors log holds lines back for a second: each test starts with its own.
    monkeypatch.setattr(descriptors, "exhaustion_log", descriptors.ExhaustionLog())
