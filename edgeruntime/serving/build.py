"""The one place the app is built from settings: gateway, env, jobs, dashboard and metrics.

``edgeruntime serve``, ``edgeruntime cron run`` (and the other commands that run functions) and
``edgeruntime.testing.EdgeClient`` all call :func:`build_app`, so a function sees the same env,
store and extensions wherever it runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from edgeruntime.config.env import apply_env, restore_env
from edgeruntime.config.settings import Settings
from edgeruntime.core.logs import AccessLogger, log_access
from edgeruntime.dashboard import Dashboard, attach as attach_dashboard
from edgeruntime.gateway.app import EdgeApp
from edgeruntime.gateway.extensions import Extension
from edgeruntime.jobs.clock import Clock
from edgeruntime.jobs.store import JobStore
from edgeruntime.jobs.system import JobSystem, attach as attach_jobs

__all__ = ["BuiltApp", "ProcessEnv", "build_app", "process_environ"]


class ProcessEnv(Extension):
    """Makes ``os.environ`` hold exactly the functions' env while the app runs; restores it after.

    Inline functions share the server's process, so ``os.environ.get`` agrees with
    ``Deno.env.get`` only if the process's environment is the functions' env. With several apps
    running in one process (test clients), ``os.environ`` is the env of the app started last that
    is still running, whatever order they stop in; once all have stopped it is what it was before
    the first started, names none of them set keeping whatever was set meanwhile.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        #: What each name this app changed held under it (None: unset); None while not applied.
        self._previous: dict[str, str | None] | None = None

    async def start(self) -> None:
        with _lock:
            if self._previous is None:
                self._previous = apply_env(self.env)
                _applied.append(self)

    def reconfigure(self, settings: Settings) -> None:
        old, self.env = self.env, settings.env
        with _lock:
            if self._previous is None:
                return
            index = _applied.index(self)
            if index == len(_applied) - 1:
                # A name this changes for the first time had its original value until now.
                for name, value in apply_env(self.env).items():
                    self._previous.setdefault(name, value)
                return
            # Under an app started later, whose env os.environ keeps: what that one restores changes.
            above = _applied[index + 1]._previous
            assert above is not None
            for name in old.keys() | self.env.keys():
                if old.get(name) != self.env.get(name):
                    self._previous.setdefault(name, old.get(name))
                    above[name] = self.env.get(name)

    async def stop(self) -> None:
        with _lock:
            previous, self._previous = self._previous, None
            if previous is None:
                return
            index = _applied.index(self)
            del _applied[index]
            if index == len(_applied):
                restore_env(previous)
                return
            # Stopped before an app started after it, whose env os.environ keeps: that one now
            # restores what was there before this one.
            above = _applied[index]._previous
            assert above is not None
            above.update(previous)


#: The running ProcessEnvs in the order they started: os.environ holds the last one's env.
_applied: list[ProcessEnv] = []
_lock = threading.Lock()


def process_environ() -> dict[str, str]:
    """The process's own environment: ``os.environ`` without the functions' env of the apps
    running in this process, as a server started now would find it."""
    with _lock:
        environ = dict(os.environ)
        for env in reversed(_applied):
            assert env._previous is not None
            restore_env(env._previous, environ)
    return environ


@dataclass(frozen=True)
class BuiltApp:
    """An app as :func:`build_app` assembles it, with the extensions callers talk to."""

    app: EdgeApp
    jobs: JobSystem
    dashboard: Dashboard


def build_app(
    settings: Settings,
    *,
    store: JobStore | None = None,
    clock: Clock | None = None,
    background: bool = True,
    access_log: AccessLogger = log_access,
    announce: bool = True,
) -> BuiltApp:
    """The app that serves every function of `settings.functions_dir`, not yet started.

    Registers, in this order: the functions' env in ``os.environ`` (inline isolation), the jobs
    system (run history, cron, queue, on `store` or the one `settings` names), the metrics and
    the dashboard. `background=False` runs no scheduler or queue loop (tests and one-off commands
    deliver by hand). `announce=False` (a serving process of several, whose supervisor speaks
    for all of them) leaves out what holds for the whole server: a function's syntax error, the
    sandbox, the store's journal mode. Raises ConfigError for an invalid ``[cron.*]`` or ``[jobs]``
    entry.

    Example::

        built = build_app(Settings.build("functions"))
        await built.app.startup()
    """
    app = EdgeApp(settings, access_log=access_log, announce=announce)
    if settings.isolation == "inline":
        app.add_extension(ProcessEnv(settings.env))
    jobs = attach_jobs(app, store=store, clock=clock, background=background)
    dashboard = attach_dashboard(app, jobs)
    return BuiltApp(app, jobs, dashboard)
