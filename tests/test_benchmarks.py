"""The benchmarks that switch parts of the server off by name: a name that is gone fails loudly."""

from __future__ import annotations

import pytest

from benchmarks.parts import VARIANTS, _replace, _switch_off


def test_every_part_the_parts_benchmark_switches_off_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """monkeypatch.setattr raises for a missing name, and undoes every replacement after the test."""
    _switch_off({part for parts in VARIANTS.values() for part in parts}, replace=monkeypatch.setattr)


def test_replacing_a_part_that_is_gone_names_it() -> None:
    class Part:
        kept = 1

    _replace(Part, "kept", 2)
    assert Part.kept == 2
    with pytest.raises(AttributeError, match=r"Part\.renamed is gone; update _switch_off"):
        _replace(Part, "renamed", 3)
