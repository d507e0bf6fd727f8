"""What changed between two settings of one server, for applying an edit of config.toml or .env live.

Settings are compared as flat names (``functions.hello.verify_jwt``, ``edge_runtime.wall_clock_limit_sec``,
``env.API_KEY``), so a log line can say what changed without saying any value: env values and
secrets never reach the log. Some settings cannot change while the server runs (see
:data:`RESTART_ONLY`); they are reported as needing a restart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from edgeruntime.config.project import FunctionConfig
from edgeruntime.config.settings import Settings
from edgeruntime.limits import Limits

__all__ = ["RESTART_ONLY", "SettingsChange", "compare_settings"]

#: Settings a running server keeps until it is restarted (by the name's first part, or whole name):
#: the worker isolation and its sandbox are the shape of the running workers, the keep-alive
#: timeout is the HTTP server's, and cron, the jobs queue and the dashboard's hosts are set up at start.
RESTART_ONLY = (
    "edge_runtime.isolation",
    "edge_runtime.sandbox",
    "edge_runtime.worker_uid_range",
    "edge_runtime.keep_alive_timeout_sec",
    "edge_runtime.inspector_port",
    "auth.signing_keys_path",
    "cron",
    "jobs",
    "dashboard",
)
#: Function settings read at every request: changing them reloads no worker.
_PER_REQUEST_KEYS = ("verify_jwt", "enabled", "description")
_DEFAULT_FUNCTION = FunctionConfig()


@dataclass(frozen=True)
class SettingsChange:
    """The names of what changed, split by when it can apply."""

    #: Applied while serving.
    applied: tuple[str, ...] = ()
    #: Kept at the running value until a restart.
    restart: tuple[str, ...] = ()
    #: Functions whose workers must boot again to see the change; None: every function.
    reload: frozenset[str] | None = frozenset()

    def __bool__(self) -> bool:
        return bool(self.applied or self.restart)


def _flatten(settings: Settings) -> dict[str, object]:
    config = settings.config
    flat: dict[str, object] = {
        "edge_runtime.policy": settings.policy,
        "edge_runtime.isolation": settings.isolation,
        "edge_runtime.sandbox": settings.sandbox,
        "edge_runtime.worker_uid_range": config.worker_uid_range,
        "edge_runtime.keep_alive_timeout_sec": settings.keep_alive_timeout_sec,
        "edge_runtime.inspector_port": config.inspector_port,
        "auth.jwt_secret": config.jwt_secret,
        "auth.signing_keys": config.signing_keys,
        "auth.signing_keys_path": config.signing_keys_path,
        "jobs": dict(config.jobs),
        "dashboard": config.dashboard,
    }
    for limit_field in dataclasses.fields(Limits):
        flat[f"edge_runtime.{limit_field.name}"] = getattr(settings.limits, limit_field.name)
    for name, function in config.functions.items():
        # A key left at its default is the same as no key (a new [functions.x] table changes nothing else).
        for key in _PER_REQUEST_KEYS:
            if getattr(function, key) != getattr(_DEFAULT_FUNCTION, key):
                flat[f"functions.{name}.{key}"] = getattr(function, key)
        for key, limit in function.limits.items():
            flat[f"functions.{name}.{key}"] = limit
    for name, cron in config.cron.items():
        flat[f"cron.{name}"] = cron
    for name, env_value in settings.env.items():
        flat[f"env.{name}"] = env_value
    return flat


def _restart_only(name: str) -> bool:
    return any(name == key or name.startswith(key + ".") for key in RESTART_ONLY)


def compare_settings(old: Settings, new: Settings) -> SettingsChange:
    """What differs from `old` to `new`, by name (never by value)."""
    before, after = _flatten(old), _flatten(new)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    restart = tuple(name for name in changed if _restart_only(name))
    applied = tuple(name for name in changed if not _restart_only(name))
    reload: set[str] | None = set()
    for name in applied:
        section, _, rest = name.partition(".")
        if section == "functions":
            function, _, key = rest.rpartition(".")
            if key not in _PER_REQUEST_KEYS and reload is not None:
                reload.add(function)
        else:  # the env, a global limit, the policy or the keys (which are in every function's env)
            reload = None
    return SettingsChange(applied, restart, None if reload is None else frozenset(reload))
