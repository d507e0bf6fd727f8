"""StopReason: one vocabulary, its two spellings mapped in one place."""

from __future__ import annotations

from typing import get_args

from edgeruntime.core.events import StopReason, UnloadReason


def test_the_runtime_names_and_the_beforeunload_reasons_of_the_design() -> None:
    told = {reason: reason.unload_reason for reason in StopReason if reason.unload_reason is not None}
    assert {str(r): u for r, u in told.items()} == {
        "WallClockTime": "wall_clock",
        "CPUTime": "cpu",
        "Memory": "memory",
        "EarlyDrop": "early_drop",
        "TerminationRequested": "termination",
    }
    assert set(told.values()) == set(get_args(UnloadReason))


def test_every_reason_has_a_snake_case_key_and_the_others_are_not_told_to_listeners() -> None:
    keys = {reason: reason.key for reason in StopReason}
    assert len(set(keys.values())) == len(StopReason)
    assert all(key == key.lower() and " " not in key for key in keys.values())
    untold = {r.key for r in StopReason if r.unload_reason is None}
    assert untold == {"reload", "crash", "boot_failure", "stuck_handler"}
