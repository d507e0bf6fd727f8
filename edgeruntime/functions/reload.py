"""Hot reload: a change to a function's files reloads only that function.

A single server watches the functions directory itself (:func:`watch_functions`). With several
serving processes (``serve --workers N``) the supervisor watches it (:func:`function_edits`) and
tells every serving process, which reloads as a single server does (:func:`apply_told_edits`):
one watcher, so each change is logged once, and one of the processes says what it reloaded and
which function cannot boot (the others keep that boot error without logging it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import watchfiles

from edgeruntime.core.descriptors import exhaustion, report_exhaustion
from edgeruntime.functions.discovery import function_for_path

__all__ = ["Reload", "apply_told_edits", "function_edits", "reload_functions", "watch_functions"]

logger = logging.getLogger("edgeruntime")

#: Editor and tool droppings that never trigger a reload (the Supabase CLI's list, plus Python's).
IGNORED_DIRS = {".git", "node_modules", ".vscode", ".idea", "__pycache__", ".mypy_cache", ".pytest_cache"}
IGNORED_SUFFIXES = ("~", ".swp", ".swx", ".tmp", ".pyc")
#: How often a reload that failed for want of file descriptors is tried again.
RELOAD_RETRY_SEC = 0.5


class Reload(Protocol):
    """What reloads functions (`EdgeApp.reload`): the names whose files changed (``_shared`` for
    shared code) in, the names reloaded out. `report=False` logs no syntax error it finds (another
    serving process, reloading the same files, says it) but keeps it as the function's boot error."""

    def __call__(self, names: set[str], *, report: bool = True) -> list[str]: ...


class _Filter(watchfiles.DefaultFilter):
    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        p = Path(path)
        if any(part in IGNORED_DIRS for part in p.parts) or p.name.endswith(IGNORED_SUFFIXES):
            return False
        return not p.name.startswith((".#", "___"))


async def watch_functions(root: Path, reload: Reload, stop: asyncio.Event) -> None:
    """Watch the functions directory `root` until `stop` is set.

    `reload(names)` is called with the functions whose files changed (``_shared`` for shared
    code) and returns the names it reloaded.
    """
    async for names in function_edits(root, stop):
        await reload_functions(reload, names, stop)


async def function_edits(root: Path, stop: asyncio.Event) -> AsyncIterator[set[str]]:
    """Each batch of changes under the functions directory `root`, until `stop` is set: every
    changed file logged ("File change detected"), the batch yielded as the functions it touches
    (``_shared`` for shared code; empty when no function's files changed, e.g. a file at the top)."""
    async for changes in watchfiles.awatch(
        root, watch_filter=_Filter(), stop_event=stop, debounce=150, step=30, recursive=True
    ):
        names: set[str] = set()
        for change, path in changes:
            logger.info("File change detected: %s (%s)", path, change.name.lower())
            name = function_for_path(root, Path(path))
            if name is not None:
                names.add(name)
        yield names


async def reload_functions(reload: Reload, names: set[str], stop: asyncio.Event, *, report: bool = True) -> list[str]:
    """`reload(names, report=report)` (see :func:`_reload`); returns the names reloaded.

    `report=False` logs no "reloaded" line and no syntax error of the reloaded files (another
    serving process, reloading the same functions, says them); a reload that fails is logged
    either way: it failed in this process.
    """
    reloaded = await _reload(reload, names, stop, report=report)
    if reloaded and report:
        logger.info("reloaded %s", ", ".join(reloaded))
    return reloaded


async def apply_told_edits(edits: asyncio.Queue[tuple[set[str], bool]], reload: Reload, stop: asyncio.Event) -> None:
    """Reload the functions of each edit another process saw (``(names, report)``, see
    :func:`reload_functions`), one after the other as they come, until cancelled (a server
    cancels its background work once it has stopped; `stop` set meanwhile ends a retry)."""
    while True:
        names, report = await edits.get()
        await reload_functions(reload, names, stop, report=report)


async def _reload(reload: Reload, names: set[str], stop: asyncio.Event, *, report: bool = True) -> list[str]:
    """`reload(names, report=report)`, tried again every RELOAD_RETRY_SEC while the server is out of descriptors.

    Rescanning the functions directory needs a descriptor; changes made meanwhile are kept by
    the watcher and come next. Any other OSError is logged, and the watcher goes on.
    """
    while not stop.is_set():
        try:
            return reload(names, report=report)
        except OSError as exc:
            error = exhaustion(exc)
            if error is None:  # the watcher keeps watching: the next change is tried afresh
                logger.warning("reloading %s failed: %s", ", ".join(sorted(names)) or "functions", exc)
                return []
            report_exhaustion("reloading changed functions", error)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), RELOAD_RETRY_SEC)
    return []
