"""Everything one server runs with, resolved once from flags, config.toml and the environment.

``edgeruntime serve`` and ``edgeruntime.testing.EdgeClient`` both build their app from a
:class:`Settings`, so tests see the same env, limits and auth as the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgeruntime.config.env import build_env
from edgeruntime.config.keys import Keys, demo_keys
from edgeruntime.config.project import ProjectConfig, find_config, load_config
from edgeruntime.exceptions import ConfigError
from edgeruntime.functions.discovery import check_functions_dir
from edgeruntime.limits import FREE_TIER, LIMIT_KEYS, PRO_TIER, Isolation, Limits, Policy

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Settings", "parse_limit_options"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 54321
#: How long shutdown waits for background work (the edge runtime's --graceful-exit-timeout).
DEFAULT_GRACEFUL_EXIT_TIMEOUT_SEC = 15.0
LogFormat = Literal["text", "json"]


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
    watch: bool = True
    log_format: LogFormat = "text"
    database_url: str | None = None
    server: str = "hypercorn"

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
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
        **options: Any,
    ) -> Settings:
        """Resolve settings the way `edgeruntime serve` does; flags win over config.toml.

        `limits` replaces the limits (a Limits) or overrides some of them (a mapping of limit keys).
        """
        environ = os.environ if environ is None else environ
        directory = check_functions_dir(Path(functions_dir))
        config = load_config(find_config(directory, Path(config_path) if config_path else None), environ)
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
            **options,
        )
        env = build_env(
            environ=environ,
            functions_dir=directory,
            keys=keys,
            base_url=settings.base_url,
            secrets=config.secrets,
            env_file=Path(env_file) if env_file else None,
            database_url=settings.database_url,
        )
        object.__setattr__(settings, "env", env)
        # Keys handed out must be the ones accepted: an env that sets its own keys wins.
        object.__setattr__(settings, "keys", keys.overridden_by(env))
        return settings


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
        parsed[key] = value
    return parsed
