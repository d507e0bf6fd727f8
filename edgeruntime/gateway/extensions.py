"""What runs with the gateway: the one interface jobs, the dashboard, metrics and test helpers use.

An :class:`Extension` is registered with ``EdgeApp.add_extension`` before the app starts. The app
then calls its observers (each finished invocation, each finished ``wait_until`` task, each worker
that retires or ends), serves its mounts (paths outside ``/functions/v1/``), hides its private
files from worker processes, hands it the jobs that functions in worker processes enqueue, and
starts and stops it with itself: ``start`` in the order of registration, ``quiesce`` (stop taking
new work) before the functions drain, ``stop`` in reverse order after.

The observers are plain callables collected once at registration: the request path calls them
directly, as it would call a list of callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from edgeruntime.config.settings import Settings
from edgeruntime.core.background import BackgroundTask
from edgeruntime.core.events import StopReason
from edgeruntime.core.types import ASGIApp, Enqueue

__all__ = ["BackgroundObserver", "Extension", "Invocation", "InvocationObserver", "WorkerObserver"]


class Invocation(NamedTuple):
    """One finished invocation, handed to observers (run history, metrics).

    A named tuple, not a dataclass: one is made for every request.
    """

    function: str
    trigger: str
    execution_id: str
    method: str
    path: str
    status: int
    started_at: float
    duration_ms: float
    error: str | None = None


#: Called with every finished invocation, on the request's path.
InvocationObserver = Callable[[Invocation], None]
#: Called with every `wait_until` task that ends, in any function.
BackgroundObserver = Callable[[BackgroundTask], None]
#: Told when a worker retires or ends: ("retired" | "ended", function, why).
WorkerObserver = Callable[[str, str, StopReason], None]


class Extension:
    """Something that runs with an app; override what it needs (every part is optional).

    Example::

        class Counter(Extension):
            def __init__(self) -> None:
                self.count = 0
                self.observe_invocation = self.seen

            def seen(self, invocation: Invocation) -> None:
                self.count += 1

        app.add_extension(Counter())
    """

    #: Called with every finished invocation, on the request's path: keep it to a few operations.
    observe_invocation: InvocationObserver | None = None
    #: Called with every `wait_until` task that ends, in any function.
    observe_background: BackgroundObserver | None = None
    #: Called when a worker retires or ends, with ("retired" | "ended", function, reason).
    observe_worker: WorkerObserver | None = None
    #: Enqueues the jobs functions in worker processes enqueue (process isolation: a worker holds
    #: no store of its own). One extension serves them: the last registered with one.
    enqueue: Enqueue | None = None

    def mounts(self) -> Mapping[str, ASGIApp]:
        """Path prefix → ASGI app, for paths outside ``/functions/v1/`` (read at registration)."""
        return {}

    def private_paths(self) -> Iterable[Path]:
        """Files and directories of the server that worker processes must not see, e.g. a
        SQLite jobs store (hidden under the ``bwrap`` sandbox; read at registration)."""
        return ()

    async def start(self) -> None:
        """The app starts (before it serves its first request)."""

    def reconfigure(self, settings: Settings) -> None:
        """The app now runs with `settings` (config.toml or .env was edited while serving)."""

    async def quiesce(self) -> None:
        """The app is shutting down: stop taking new work; the functions drain after this."""

    async def stop(self) -> None:
        """The app has shut down (its functions drained): release what `start` took."""
