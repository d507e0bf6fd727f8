"""Hot reload: a change to a function's files reloads only that function."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import watchfiles

from edgeruntime.functions.discovery import function_for_path

__all__ = ["watch_functions"]

logger = logging.getLogger("edgeruntime")

#: Editor and tool droppings that never trigger a reload (the Supabase CLI's list, plus Python's).
IGNORED_DIRS = {".git", "node_modules", ".vscode", ".idea", "__pycache__", ".mypy_cache", ".pytest_cache"}
IGNORED_SUFFIXES = ("~", ".swp", ".swx", ".tmp", ".pyc")


class _Filter(watchfiles.DefaultFilter):
    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        p = Path(path)
        if any(part in IGNORED_DIRS for part in p.parts) or p.name.endswith(IGNORED_SUFFIXES):
            return False
        return not p.name.startswith((".#", "___"))


async def watch_functions(root: Path, reload: Callable[[set[str]], list[str]], stop: asyncio.Event) -> None:
    """Watch the functions directory `root` until `stop` is set.

    `reload(names)` is called with the functions whose files changed (``_shared`` for shared
    code) and returns the names it reloaded.
    """
    async for changes in watchfiles.awatch(
        root, watch_filter=_Filter(), stop_event=stop, debounce=150, step=30, recursive=True
    ):
        names: set[str] = set()
        for change, path in changes:
            print(f"File change detected: {path} ({change.name.lower()})", flush=True)
            name = function_for_path(root, Path(path))
            if name is not None:
                names.add(name)
        reloaded = reload(names)
        if reloaded:
            logger.info("reloaded %s", ", ".join(reloaded))
