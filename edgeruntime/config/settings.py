"""Everything one server runs with, resolved once from flags, config.toml and the environment.

``edgeruntime serve`` and ``edgeruntime.testing.EdgeClient`` both build their app from a
:class:`Settings`, so tests see the same env, limits and auth as the server.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgeruntime.config.env import build_env, withheld_environ
from edgeruntime.config.keys import DEMO_JWT_SECRET, Keys, demo_keys
from edgeruntime.config.project import (
    DEFAULT_KEEP_ALIVE_TIMEOUT_SEC,
    MAX_SERVING_PROCESSES,
    SANDBOX_MODES,
    ProjectConfig,
    SandboxMode,
    Workers,
    find_config,
    keep_alive_problem,
    load_config,
    parse_workers,
)
from edgeruntime.exceptions import ConfigError
from edgeruntime.functions.discovery import check_functions_dir, discover
from edgeruntime.limits import FREE_TIER, LIMIT_KEYS, PRO_TIER, Isolation, Limits, Policy, limit_problem

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_KEEP_ALIVE_TIMEOUT_SEC",
    "DEFAULT_PORT",
    "Settings",
    "listen_host",
    "missing_functions",
    "parse_limit_options",
    "public_keys_warning",
    "serving_processes",
    "usable_cpus",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 54321
#: How long shutdown waits for background work (the edge runtime's --graceful-exit-timeout).
DEFAULT_GRACEFUL_EXIT_TIMEOUT_SEC = 15.0
LogFormat = Literal["text", "json"]

logger = logging.getLogger("edgeruntime")


@dataclass(frozen=True)
class Settings:
    """The resolved settings of one server (or one test client)."""

    functions_dir: Path
    config: ProjectConfig
    limits: Limits
    policy: Policy
    isolation: Isolation
    env: Mapping[str, str]
    keys: Keys
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: None: each function's verify_jwt applies; False: `--no-verify-jwt` turned it off for all.
    verify_jwt_override: bool | None = None
    graceful_exit_timeout_sec: float = DEFAULT_GRACEFUL_EXIT_TIMEOUT_SEC
    #: Seconds an idle connection stays open (`--keep-alive-timeout`, `[edge_runtime] keep_alive_timeout_sec`).
    keep_alive_timeout_sec: float = DEFAULT_KEEP_ALIVE_TIMEOUT_SEC
    watch: bool = True
    log_format: LogFormat = "text"
    database_url: str | None = None
    #: Where `database_url` came from, for error messages: "--database-url" or "EDGERUNTIME_DATABASE_URL".
    database_url_source: str = "--database-url"
    #: The HTTP server: "uvicorn" or "hypercorn" ("auto" until `edgeruntime serve` resolves it).
    server: str = "auto"
    #: Serving processes behind the listening socket (`--workers`, `[edge_runtime] workers`).
    serving_processes: int = 1
    #: What wraps each worker process under process isolation (resolved by
    #: :func:`edgeruntime.workers.process.sandbox.sandbox_for`).
    sandbox: SandboxMode = "auto"
    #: `--sandbox` when it was given (it then wins over config.toml).
    sandbox_flag: bool = False
    #: The env of a sandboxed worker process: `env` built without the server's own environment
    #: (only what Python needs to run and the injected SUPABASE_* names it overrides).
    isolated_env: Mapping[str, str] = field(default_factory=dict)
    #: What loading the files found wrong and went on without, one line each (a statement of the
    #: env file that cannot be parsed): logged by :meth:`build` (unless `warn_env=False`), and by
    #: the config reloader when a reload finds a new one.
    load_warnings: tuple[str, ...] = ()

    @property
    def base_url(self) -> str:
        # A server on every interface is reached, and announced, on loopback.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(self.host, self.host)
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.port}"

    def function_url(self, name: str) -> str:
        return f"{self.base_url}/functions/v1/{name}"

    def verify_jwt(self, function: str) -> bool:
        if self.verify_jwt_override is not None:
            return self.verify_jwt_override
        return self.config.function(function).verify_jwt

    def limits_for(self, function: str) -> Limits:
        return self.config.limits_for(function, self.limits)

    def enabled(self, function: str) -> bool:
        return self.config.function(function).enabled

    @property
    def websocket_max_message_bytes(self) -> int:
        """The largest WebSocket message the server reads: the largest any function allows
        (each function's own limit is then kept by the gateway)."""
        return max(
            [self.limits.max_websocket_message_bytes]
            + [self.limits_for(name).max_websocket_message_bytes for name in self.config.functions]
        )

    @classmethod
    def build(
        cls,
        functions_dir: str | os.PathLike[str] = "functions",
        *,
        config_path: str | os.PathLike[str] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        no_verify_jwt: bool = False,
        tier: str | None = None,
        policy: Policy | None = None,
        isolation: Isolation | None = None,
        limits: Limits | Mapping[str, float] | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        database_url: str | None = None,
        warn_env: bool = True,
        keep_alive_timeout_sec: float | None = None,
        sandbox: str | None = None,
        workers: str | None = None,
        **options: Any,
    ) -> Settings:
        """Resolve settings the way `edgeruntime serve` does; flags win over config.toml.

        `limits` replaces the limits (a Limits) or overrides some of them (a mapping of limit keys).
        `warn_env=False` leaves out the warnings about the functions' env (dropped `SUPABASE_*`
        names, unset secrets), for commands that only read the keys or the function list.
        `keep_alive_timeout_sec` (the `--keep-alive-timeout` flag) overrides the config's, and
        `workers` (the `--workers` flag: a number or "auto") the config's `workers`. `host` may be
        an IPv6 address in brackets (see :func:`listen_host`).
        """
        environ = os.environ if environ is None else environ
        host = listen_host(host)
        directory = check_functions_dir(Path(functions_dir))
        config = load_config(find_config(directory, Path(config_path) if config_path else None), environ, warn=warn_env)
        effective = config.limits
        if tier is not None:
            if tier not in ("free", "pro"):
                raise ConfigError(f"--tier: expected free or pro, got {tier!r}")
            tier_limits = FREE_TIER if tier == "free" else PRO_TIER
            effective = effective.replace(wall_clock_limit_sec=tier_limits.wall_clock_limit_sec)
        if isinstance(limits, Limits):
            effective = limits
        elif limits:
            try:
                effective = effective.replace(**limits)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"limits: {exc}") from None
        if keep_alive_timeout_sec is None:
            keep_alive_timeout_sec = config.keep_alive_timeout_sec
        else:
            problem = keep_alive_problem(keep_alive_timeout_sec)
            if problem is not None:
                raise ConfigError(f"--keep-alive-timeout: {problem}")
        if workers is None:
            count = serving_processes(config.workers)
        else:
            try:
                count = serving_processes(parse_workers(workers, text=True))
            except ValueError as exc:
                raise ConfigError(f"--workers: {exc}") from None
        if sandbox is not None and sandbox not in SANDBOX_MODES:
            raise ConfigError(f"--sandbox: expected one of {', '.join(SANDBOX_MODES)}, got {sandbox!r}")
        keys = demo_keys(config.jwt_secret, config.signing_keys)
        settings = cls(
            functions_dir=directory,
            config=config,
            limits=effective,
            policy=policy or config.policy,
            isolation=isolation or config.isolation,
            env={},
            keys=keys,
            host=host,
            port=port,
            verify_jwt_override=False if no_verify_jwt else None,
            database_url=database_url or environ.get("EDGERUNTIME_DATABASE_URL"),
            database_url_source="--database-url" if database_url else "EDGERUNTIME_DATABASE_URL",
            keep_alive_timeout_sec=keep_alive_timeout_sec,
            sandbox=sandbox or config.sandbox,
            sandbox_flag=sandbox is not None,
            serving_processes=count,
            **options,
        )
        layers: dict[str, Any] = {
            "functions_dir": directory,
            "keys": keys,
            "base_url": settings.base_url,
            "secrets": config.secrets,
            "env_file": Path(env_file) if env_file else None,
            "database_url": settings.database_url,
        }
        problems: list[str] = []
        env = build_env(environ=environ, warn=warn_env, problems=problems, **layers)
        object.__setattr__(settings, "env", env)
        object.__setattr__(settings, "load_warnings", tuple(problems))
        if warn_env:
            for line in problems:
                logger.warning("%s", line)
        if settings.isolation == "process":
            # The same file read again: what is wrong in it was said above.
            isolated = build_env(environ=withheld_environ(environ), warn=False, problems=[], **layers)
            object.__setattr__(settings, "isolated_env", isolated)
        elif settings.sandbox not in ("auto", "none"):
            logger.warning("sandbox = %r has no effect under isolation inline", settings.sandbox)
        # Keys handed out must be the ones accepted: an env that sets its own keys wins.
        object.__setattr__(settings, "keys", keys.overridden_by(env))
        return settings


#: A host with a port, as a URL writes them: "[ADDRESS]:PORT" (IPv6), "NAME:PORT".
_WITH_PORT = re.compile(r"\[([^\[\]]*)\]:([0-9]+)|([^:\[\]]+):([0-9]+)")


def listen_host(host: str) -> str:
    """`host` (``--host``) as the address to listen on: an IPv6 address in brackets, as URLs write
    it (``[::1]``, copied from one), is that address (``::1``); any other host is returned as is.

    ConfigError naming ``--host`` for brackets around anything but an IPv6 address, brackets that do
    not pair, and a port written into the host (``[::1]:8080``, ``localhost:8080``).
    """
    with_port = _WITH_PORT.fullmatch(host)
    if with_port is not None:
        address, address_port, name, name_port = with_port.groups()
        written = f"[{address}] --port {address_port}" if name is None else f"{name} --port {name_port}"
        raise ConfigError(f"--host {host!r}: the port is not part of the host: --host {written}")
    opened, closed = host.startswith("["), host.endswith("]")
    if not (opened or closed):
        return host
    if opened != closed:
        missing = "closed" if opened else "opened"
        raise ConfigError(f"--host {host!r}: a bracket is not {missing}; an IPv6 address is written ::1 or [::1]")
    inner = host[1:-1]
    try:
        ipaddress.IPv6Address(inner)
    except ValueError:
        pass
    else:
        return inner
    brackets = f"--host {host!r}: brackets go around an IPv6 address only, like [::1]"
    if not inner:
        raise ConfigError(f"{brackets}; got nothing inside")
    try:
        ipaddress.IPv4Address(inner)
    except ValueError:
        raise ConfigError(f"{brackets}; for a name, leave them out") from None
    raise ConfigError(f"{brackets}; for an IPv4 address, leave them out: --host {inner}")


def missing_functions(settings: Settings, found: Collection[str] | None = None) -> list[str]:
    """One line for each `[functions.<name>]` of config.toml with no function `<name>` in the
    functions directory (a typo, or a function not written yet): a warning, as the function may
    be added while serving. `found`: the function names discovered (else discovered now)."""
    config = settings.config
    if not config.functions:
        return []
    names = set(discover(settings.functions_dir)) if found is None else set(found)
    missing = [name for name in config.functions if name not in names]
    if not missing:
        return []
    import difflib  # for the warning only: a server whose config names its functions does not load it

    lines = []
    for name in missing:
        close = difflib.get_close_matches(name, sorted(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        lines.append(f"{config.path}: [functions.{name}]: no function {name!r} in {settings.functions_dir}{hint}")
    return lines


def public_keys_warning(settings: Settings) -> str | None:
    """One line when `settings` serve off loopback with the demo JWT secret, else None.

    With that secret every key is public (it is in Supabase's docs): whoever reaches the port can
    sign a service-role JWT. Not refused: a trusted network or a proxy in front may be the point.
    """
    if settings.keys.jwt_secret != DEMO_JWT_SECRET:
        return None
    host = settings.host.strip("[]")
    try:
        loopback = host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return None
    return (
        f"--host {settings.host} with the demo JWT secret: anyone who reaches this port can sign a "
        "service-role key (the demo keys are public); set [auth] jwt_secret in config.toml to a secret of your own"
    )


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a container's cpuset, `taskset`) where the
    OS has one, else every CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def serving_processes(workers: Workers) -> int:
    """How many serving processes `workers` means: "auto" is one per usable CPU (at most MAX_SERVING_PROCESSES)."""
    if workers == "auto":
        return min(usable_cpus(), MAX_SERVING_PROCESSES)
    return workers


def parse_limit_options(options: Iterable[str]) -> dict[str, float]:
    """Parse ``--limit KEY=VALUE`` options (``wall_clock_limit_sec=60``); raises ConfigError naming the bad one."""
    parsed: dict[str, float] = {}
    for option in options:
        key, sep, raw = option.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--limit {option}: expected KEY=VALUE, e.g. wall_clock_limit_sec=60")
        if key not in LIMIT_KEYS:
            raise ConfigError(f"--limit {option}: unknown limit {key!r}; known limits: {', '.join(LIMIT_KEYS)}")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"--limit {option}: {raw!r} is not a number") from None
        problem = limit_problem(key, value)
        if problem is not None:
            raise ConfigError(f"--limit {option}: {key} {problem}, got {raw.strip()}")
        parsed[key] = value
    return parsed
