from __future__ import annotations

import subprocess
import sys
import types

import pytest

import edgeruntime


def test_all_is_exact() -> None:
    public = {
        name
        for name in dir(edgeruntime)
        if not name.startswith("_")
        and not isinstance(getattr(edgeruntime, name), types.ModuleType)
        and name != "annotations"
    }
    assert set(edgeruntime.__all__) == public | {"__version__"}


def test_public_names_are_the_defining_modules_objects() -> None:
    from edgeruntime import exceptions, limits, runtime

    assert edgeruntime.serve is runtime.serve
    assert edgeruntime.Deno is runtime.Deno
    assert edgeruntime.EdgeRuntime is runtime.EdgeRuntime
    assert edgeruntime.EdgeRuntimeError is exceptions.EdgeRuntimeError
    assert edgeruntime.Limits is limits.Limits
    with pytest.raises(AttributeError, match="nope"):
        edgeruntime.nope  # noqa: B018


def test_importing_the_package_is_cheap() -> None:
    # `python -m edgeruntime` pauses the collector only after the package is imported.
    code = (
        "import sys, edgeruntime; "
        "heavy = [m for m in ('asyncio', 'starlette', 'edgeruntime.runtime') if m in sys.modules]; "
        "print(heavy); from edgeruntime import serve; print(serve.__module__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "edgeruntime.runtime"]
