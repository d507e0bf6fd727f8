"""Applying edits of config.toml and the functions' ``.env`` while ``edgeruntime serve`` runs.

The Supabase CLI restarts its runtime when config.toml changes; here the settings are resolved
again, exactly as at start (same flags, same server environment), and applied in place: JWT
verification, the keys, ``enabled`` and the request limits take effect at the next request, and
the functions whose env or limits changed retire their workers, so their next request boots them
with the new values (in-flight requests and background work finish on the old worker). One line
says what changed, by name only (never a value). An edit that does not load (a TOML error, a bad
key) is logged as one line naming the file and key, and the running settings are kept. What
cannot change while serving (:data:`edgeruntime.config.changes.RESTART_ONLY`, and the flags) is
logged as needing a restart, and keeps its running value.

With several serving processes (``--workers N``), the supervisor watches the files and tells
every serving process of an edit (see `edgeruntime.serving.control`): each one applies it, and
one of them logs the lines, so each is said once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from edgeruntime.config.changes import compare_settings
from edgeruntime.config.env import ENV_FILE
from edgeruntime.config.settings import Settings, missing_functions
from edgeruntime.exceptions import EdgeRuntimeError
from edgeruntime.functions.discovery import discover
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.jobs.config import JobsConfig
from edgeruntime.jobs.scheduler import cron_jobs

__all__ = ["ConfigReloader", "apply_edit", "watched_files", "watch_config"]

logger = logging.getLogger("edgeruntime")


def watched_files(settings: Settings, config_path: Path | None, env_file: Path | None) -> list[Path]:
    """The files whose edits apply live: config.toml (where it is, or would be) and the env file."""
    config = config_path or settings.config.path or settings.functions_dir.parent / "config.toml"
    env = env_file or settings.functions_dir / ENV_FILE
    return [config.resolve(), env.resolve()]


class ConfigReloader:
    """Resolves the settings again with `rebuild()` and applies them to `app`."""

    def __init__(self, app: EdgeApp, rebuild: Callable[..., Settings], files: Iterable[Path]) -> None:
        self.app = app
        self.rebuild = rebuild
        self.files = list(files)
        #: The warnings of the last load (said at start for the running settings): a reload says
        #: only new ones, so what stays wrong is said once, not at every edit.
        self._warned: set[str] = set()
        try:
            self._warned.update(_warnings(app.settings))
        except OSError:  # the functions directory gone since start: the next reload says why
            pass

    def _resolve(self) -> tuple[Settings, list[str]]:
        """The new settings, with the running isolation (workers of the other kind cannot be
        swapped in: their env is built differently), and their warnings. Raises
        EdgeRuntimeError for an invalid edit."""
        running = self.app.settings
        settings = self.rebuild()
        if settings.isolation != running.isolation:
            settings = self.rebuild(isolation=running.isolation)
            config = dataclasses.replace(settings.config, isolation=running.config.isolation)
            settings = dataclasses.replace(settings, config=config)
        # What the jobs system would refuse at the next start, refused now.
        JobsConfig.from_table(settings.config.jobs, settings.config.path)
        found = set(discover(settings.functions_dir))
        if settings.config.cron:
            cron_jobs(settings.config.cron, found)
        return settings, _warnings(settings, found)

    def reload(self, changed: Iterable[Path] = (), *, report: bool = True) -> list[str]:
        """Apply the files as they are now; returns the functions reloaded.

        `report=False` applies them without a line logged (what changed, what is wrong with the
        edit): another serving process, applying the same edit, says it.
        """
        names = ", ".join(sorted(str(path) for path in changed)) or ", ".join(str(p) for p in self.files)
        running = self.app.settings
        try:
            settings, warnings = self._resolve()
        except (EdgeRuntimeError, OSError, ValueError) as exc:  # ValueError: e.g. a file that is not UTF-8
            if report:
                logger.error("%s; still serving with the configuration loaded before (%s changed)", exc, names)
            return []
        if report:
            for line in warnings:
                if line not in self._warned:
                    logger.warning("%s", line)
        self._warned = set(warnings)
        change = compare_settings(running, settings)
        if not change:
            return []
        if change.restart:
            if report:
                logger.warning(
                    "%s cannot change while serving: restart edgeruntime serve to apply it (%s changed)",
                    ", ".join(change.restart),
                    names,
                )
            settings = _keep_running(settings, running)
        if not change.applied:
            return []
        reloaded = self.app.reconfigure(settings, change.reload, report=report)
        if report:
            logger.info(
                "configuration reloaded (%s changed): %s; %s",
                names,
                ", ".join(change.applied),
                f"functions reloaded: {', '.join(reloaded)}" if reloaded else "no function reloaded",
            )
        return reloaded


def _warnings(settings: Settings, found: Collection[str] | None = None) -> list[str]:
    """What loading `settings` found wrong and went on without: statements of the env file that
    cannot be parsed, `[functions.<name>]` tables with no function `<name>` (`found`: the
    function names discovered)."""
    return [*settings.load_warnings, *missing_functions(settings, found)]


def _keep_running(settings: Settings, running: Settings) -> Settings:
    """`settings` with the running values of what needs a restart."""
    config = dataclasses.replace(
        settings.config,
        sandbox=running.config.sandbox,
        worker_uid_range=running.config.worker_uid_range,
        keep_alive_timeout_sec=running.config.keep_alive_timeout_sec,
        signing_keys_path=running.config.signing_keys_path,
        cron=running.config.cron,
        jobs=running.config.jobs,
        dashboard=running.config.dashboard,
    )
    return dataclasses.replace(
        settings,
        config=config,
        sandbox=running.sandbox,
        keep_alive_timeout_sec=running.keep_alive_timeout_sec,
    )


async def watch_config(files: list[Path], reload: Callable[[set[Path]], Any], stop: asyncio.Event) -> None:
    """Call `reload(changed)` whenever one of `files` is written, created or removed, until `stop` is set.

    Their directories are watched rather than the files, so an editor that saves by writing a new
    file and renaming it over the old one is seen too. An edit `reload` fails on is logged, and
    the watching goes on: the next edit may be a fix.
    """
    import watchfiles

    wanted = set(files)
    directories = sorted({str(path.parent) for path in files if path.parent.is_dir()})
    if not directories:
        return

    def interesting(change: watchfiles.Change, path: str) -> bool:
        return Path(path) in wanted

    async for changes in watchfiles.awatch(
        *directories, watch_filter=interesting, stop_event=stop, debounce=150, step=30, recursive=False
    ):
        apply_edit(reload, {Path(path) for _, path in changes})


def apply_edit(reload: Callable[[set[Path]], Any], changed: set[Path]) -> None:
    """`reload(changed)`, with an error it fails on logged (one line; its traceback at debug level)."""
    try:
        reload(changed)
    except Exception as exc:
        names = ", ".join(sorted(str(path) for path in changed))
        logger.error(
            "%s changed and could not be applied (%s: %s); still serving with the configuration loaded before",
            names,
            type(exc).__name__,
            exc,
        )
        logger.debug("the error applying the edit", exc_info=True)
