"""`benchmarks instructions`: instructions per request under callgrind, a figure the machine's noise leaves alone."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import instructions


def test_the_totals_of_a_dump_are_read_and_reported_as_ratios() -> None:
    assert instructions.totals("desc: Trigger: dump\nsummary: 120\ntotals: 123\n") == 123
    assert instructions.totals("summary: 77\n") == 77
    with pytest.raises(ValueError, match="no totals"):
        instructions.totals("events: Ir\n")
    text = instructions.report(
        {("edgeruntime", "hello"): 280_000.0, ("starlette", "hello"): 200_000.0, ("edgeruntime", "bg"): 390_000.0}
    )
    assert "| edgeruntime | hello | 280,000 |" in text
    assert "- hello: edgeruntime / bare Starlette = 1.40x the instructions" in text
    assert "- bg:" not in text  # no Starlette count to compare with
    text = instructions.report(
        {("edgeruntime", "hello"): 280_000.0, ("starlette", "hello"): 200_000.0, ("asgi", "hello"): 120_000.0}
    )
    # The raw ASGI app is what the server itself costs: what each app adds is above it.
    assert "- hello: instructions above the raw ASGI app's: edgeruntime 160,000, starlette 80,000" in text


def test_bad_arguments_are_refused_with_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("valgrind") is None:
        assert instructions.main([]) == 2
        assert "apt-get install valgrind" in capsys.readouterr().err
        return
    assert instructions.main(["--apps", "django"]) == 2
    assert instructions.main(["--endpoints", "upload"]) == 2
    assert "--apps takes edgeruntime,starlette,asgi" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed (apt-get install valgrind)")
def test_edgeruntime_serves_a_counted_batch_of_requests_under_callgrind() -> None:
    per_request = instructions.count("edgeruntime", "hello", requests=64, connections=4)
    # A GET hello through Uvicorn and the runtime: hundreds of thousands of instructions, not a
    # few (nothing was counted) nor hundreds of millions (start-up was counted).
    assert 50_000 < per_request < 5_000_000
