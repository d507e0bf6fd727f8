"""The pytest plugin (registered under ``pytest11``): the ``edge_client`` fixture.

``edge_client`` is an :class:`edgeruntime.testing.EdgeClient` over the ``functions`` directory
(ini option ``edgeruntime_functions_dir``, or ``@pytest.mark.edgeruntime(functions_dir=...,
**options)``). A test that leaves background work pending or failed fails: call
``await edge_client.drain()`` before it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["edge_client"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("edgeruntime_functions_dir", "functions directory for the edge_client fixture", default="functions")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "edgeruntime(functions_dir=None, **options): options of the edge_client fixture")


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - depends on the user's environment

    @pytest.fixture
    def edge_client() -> Any:  # type: ignore[misc, unused-ignore]
        pytest.fail("the edge_client fixture needs pytest-asyncio: pip install 'edgeruntime[testing]'")

else:

    @pytest_asyncio.fixture
    async def edge_client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:  # type: ignore[misc]
        from edgeruntime.exceptions import UsageError
        from edgeruntime.testing import EdgeClient, check_options

        marker = request.node.get_closest_marker("edgeruntime")
        options: dict[str, Any] = dict(marker.kwargs) if marker else {}
        args = marker.args if marker else ()
        # `edgeruntime("other")` is `functions_dir="other"`, not ignored (the default dir served).
        if len(args) > 1 or (args and "functions_dir" in options):
            pytest.fail("@pytest.mark.edgeruntime takes one functions_dir, then options by name", pytrace=False)
        if args:
            options["functions_dir"] = args[0]
        try:
            check_options("@pytest.mark.edgeruntime", options, extra=("functions_dir", "clock", "settings"))
        except UsageError as exc:
            pytest.fail(str(exc), pytrace=False)
        directory = options.pop("functions_dir", None) or request.config.getini("edgeruntime_functions_dir")
        path = Path(directory)
        if not path.is_absolute():
            path = Path(request.config.rootpath) / path
        async with EdgeClient(path, **options) as client:
            yield client


def _problems(client: Any) -> list[str]:
    problems = []
    pending = client.pending()
    if pending:
        problems.append("background work still pending: " + ", ".join(f"{t.function}:{t.name}" for t in pending))
    if client.failed:
        problems.append(
            "background work failed: " + ", ".join(f"{t.function}:{t.name}: {t.error!r}" for t in client.failed)
        )
    return problems


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    # Checked right after the test body, while the client is still open, as a failure of the test
    # itself: a test that already failed keeps its own error, and xfail applies as to any failure.
    result = yield
    client = getattr(item, "funcargs", {}).get("edge_client")
    problems = _problems(client) if client is not None else []
    if problems:
        pytest.fail("; ".join(problems) + " (await edge_client.drain() in the test)", pytrace=False)
    return result
