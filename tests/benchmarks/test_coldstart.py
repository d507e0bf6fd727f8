"""`benchmarks coldstart`: a cold start taken apart into import groups and dataclasses."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import coldstart, peers

IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:      1500 |       1500 |   _io
import time:      2000 |       2500 |     encodings.idna
import time:       300 |        300 |       edgeruntime.jobs.store
import time:      1200 |       9000 | edgeruntime.serving.cli
import time:       800 |        800 |   uvicorn.config
import time:       100 |        100 | click.core
Serving functions on http://127.0.0.1:8000/functions/v1/<function-name>
"""


def test_import_self_times_are_summed_by_group() -> None:
    groups = coldstart.import_ms_by_group(IMPORTTIME, stdlib={"_io", "encodings"})
    assert groups == pytest.approx({"stdlib": 3.5, "edgeruntime": 1.5, "uvicorn": 0.8, "other": 0.1})


def test_a_real_start_is_taken_apart(tmp_path: Path) -> None:
    er, bare = peers.twenty_functions(tmp_path, "uvicorn")
    assert len(list((tmp_path / "functions").iterdir())) == 20
    imports, made, ready_ms, bare_imports = coldstart.taken_apart(er, bare, tmp_path)
    # What edgeruntime imports is its own and what serving needs; bare Starlette imports none of it.
    assert imports["edgeruntime"] > 0 and "edgeruntime" not in bare_imports
    assert bare_imports["starlette"] > 0 and bare_imports["uvicorn"] > 0
    # The measured process ran the real CLI: the config's dataclasses were made, and timed.
    count, seconds = made["edgeruntime.config.project"]
    assert count >= 1 and seconds > 0
    assert ready_ms > 0
    times = {"er": [120.0, 130.0], "bare": [100.0, 110.0]}
    text = coldstart.render("uvicorn", times, imports, made, ready_ms, bare_imports)
    assert "edgeruntime / bare Starlette = 1.19x (goal <= 1.0x)" in text
    assert "edgeruntime.config.project" in text
