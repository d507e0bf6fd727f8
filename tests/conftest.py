from __future__ import annotations

import logging
from pathlib import Path

import pytest

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
def _edgeruntime_logs(caplog: pytest.LogCaptureFixture) -> None:
    # The runtime's loggers do not propagate once a server configured them; tests read them here.
    for name in ("edgeruntime", "_edgeruntime_functions"):
        logging.getLogger(name).propagate = True
    caplog.set_level(logging.INFO)
