from __future__ import annotations

import types

import edgeruntime


def test_all_is_exact() -> None:
    public = {
        name
        for name, value in vars(edgeruntime).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert set(edgeruntime.__all__) == public | {"__version__"}
