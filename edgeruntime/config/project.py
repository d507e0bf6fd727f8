"""config.toml: the `[edge_runtime]`, `[auth]`, `[dashboard]`, `[functions.<name>]` and `[cron.<name>]` sections.

The file is found by ``--config`` or as ``config.toml`` in the functions directory's parent, so a
Supabase project's ``supabase/config.toml`` works when serving ``supabase/functions``. Sections
that belong to other parts of the Supabase stack (``[api]``, ``[db]``, ...) are accepted and
ignored; in the sections edgeruntime reads, an unknown key or a wrong type is a ConfigError naming
the file, the key and what was expected.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from edgeruntime.config.env import env_problem
from edgeruntime.config.keys import DEMO_JWT_SECRET
from edgeruntime.core.responses import normalize_origin
from edgeruntime.exceptions import ConfigError
from edgeruntime.functions.slug import is_valid_slug
from edgeruntime.limits import DEFAULT_LIMITS, LIMIT_KEYS, LIMIT_MAXIMUMS, Isolation, Limits, Policy, limit_problem

__all__ = [
    "SANDBOX_MODES",
    "CronConfig",
    "DashboardConfig",
    "FunctionConfig",
    "ProjectConfig",
    "SandboxMode",
    "find_config",
    "load_config",
    "parse_uid_range",
    "parse_workers",
]

logger = logging.getLogger("edgeruntime")

DEFAULT_JWT_SECRET = DEMO_JWT_SECRET

#: Top-level sections of a Supabase config.toml that edgeruntime ignores.
FOREIGN_SECTIONS = frozenset(
    {
        "project_id",
        "api",
        "db",
        "realtime",
        "studio",
        "inbucket",
        "local_smtp",
        "storage",
        "analytics",
        "experimental",
        "remotes",
    }
)
#: `[edge_runtime]` keys of the Supabase CLI that have no meaning here (accepted, ignored).
FOREIGN_EDGE_RUNTIME_KEYS = frozenset({"enabled", "deno_version"})
#: Where `edgeruntime serve --inspect` listens without an address (Deno's inspector port); a
#: config.toml's `[edge_runtime] inspector_port` (the Supabase CLI's key) replaces it.
DEFAULT_INSPECTOR_PORT = 9229
#: `[functions.<name>]` keys of the Supabase CLI that have no meaning here (accepted, ignored).
FOREIGN_FUNCTION_KEYS = frozenset({"import_map", "entrypoint", "static_files"})
CRON_OVERLAP = ("skip", "allow")
#: How long an idle HTTP connection stays open (Uvicorn's and Hypercorn's own default).
DEFAULT_KEEP_ALIVE_TIMEOUT_SEC = 5.0
#: The longest keep-alive accepted: an idle connection holds a descriptor all that time.
MAX_KEEP_ALIVE_TIMEOUT_SEC = 3600.0
#: The most serving processes `--workers` / `[edge_runtime] workers` accepts: each is a whole
#: Python process (tens of MB), and a typo of a few zeros should not start thousands of them.
MAX_SERVING_PROCESSES = 256
#: `[edge_runtime] workers` / `--workers`: how many serving processes, or "auto" (one per usable CPU).
Workers = int | Literal["auto"]
#: What wraps each worker process under process isolation (see :mod:`edgeruntime.workers.process.sandbox`).
SandboxMode = Literal["auto", "bwrap", "uid", "basic", "none"]
SANDBOX_MODES: tuple[SandboxMode, ...] = ("auto", "bwrap", "uid", "basic", "none")
#: 65536 uids (and gids of the same numbers) in the block systemd leaves unassigned (1879048192 and up).
DEFAULT_UID_RANGE = (1_879_048_192, 1_879_113_727)
MAX_UID = 4_294_967_294
_ENV_REF = re.compile(r"^env\((?P<name>[A-Za-z_][A-Za-z0-9_]*)\)$")
#: A TOML bare key: shown as written in messages; any other key is shown quoted.
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
#: An `[dashboard] allowed_hosts` entry: a name (`*.` for any subdomain) or an address, with an optional port.
_ALLOWED_HOST = re.compile(r"^(\*\.)?([a-z0-9_-]+(\.[a-z0-9_-]+)*|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$")


@dataclass(frozen=True)
class FunctionConfig:
    """`[functions.<name>]`."""

    enabled: bool = True
    verify_jwt: bool = True
    description: str | None = None
    #: Limit keys set for this function only (applied over the global limits).
    limits: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DashboardConfig:
    """`[dashboard]`."""

    #: Host names (besides loopback ones) under which a dashboard open on loopback is served:
    #: lower-case, as `name`, `name:port`, `*.domain` or `[address]:port`.
    allowed_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class CronConfig:
    """`[cron.<name>]`: a schedule that POSTs to a function."""

    name: str
    function: str
    schedule: str
    body: Mapping[str, Any] = field(default_factory=dict)
    overlap: str = "skip"
    timezone: str = "UTC"
    enabled: bool = True
    description: str | None = None


@dataclass(frozen=True)
class ProjectConfig:
    """Everything read from config.toml (defaults when there is no file)."""

    path: Path | None = None
    policy: Policy = "per_worker"
    isolation: Isolation = "inline"
    limits: Limits = DEFAULT_LIMITS
    secrets: Mapping[str, str] = field(default_factory=dict)
    jwt_secret: str = DEFAULT_JWT_SECRET
    #: Private JWKs read from `[auth] signing_keys_path` (the first one signs the anon/service keys).
    signing_keys: tuple[Mapping[str, Any], ...] = ()
    functions: Mapping[str, FunctionConfig] = field(default_factory=dict)
    cron: Mapping[str, CronConfig] = field(default_factory=dict)
    #: The raw `[jobs]` table (queue and retention settings), validated by `edgeruntime.jobs`.
    jobs: Mapping[str, Any] = field(default_factory=dict)
    dashboard: DashboardConfig = DashboardConfig()
    #: `[edge_runtime] keep_alive_timeout_sec`: seconds an idle HTTP connection stays open.
    keep_alive_timeout_sec: float = DEFAULT_KEEP_ALIVE_TIMEOUT_SEC
    #: `[edge_runtime] inspector_port`: where `--inspect` listens when given no address.
    inspector_port: int = DEFAULT_INSPECTOR_PORT
    #: What wraps each worker process under process isolation (see :mod:`edgeruntime.workers.process.sandbox`).
    sandbox: SandboxMode = "auto"
    #: `[edge_runtime] worker_uid_range` as (first, last), when set.
    worker_uid_range: tuple[int, int] | None = None
    #: `[auth] signing_keys_path`, resolved (a file worker processes must not read).
    signing_keys_path: Path | None = None
    #: `[edge_runtime] cors_origins`: the origins the runtime's own responses to function routes
    #: allow ("*": any; normalized origins; empty: no CORS headers).
    cors_origins: tuple[str, ...] = ("*",)
    #: `[edge_runtime] workers`: serving processes behind the one listening socket, or "auto".
    workers: Workers = 1

    def function(self, name: str) -> FunctionConfig:
        return self.functions.get(name) or FunctionConfig()

    def limits_for(self, name: str, base: Limits | None = None) -> Limits:
        """The limits of function `name`: `base` (or the global ones) with its own keys applied."""
        own = self.function(name).limits
        limits = base or self.limits
        return limits.replace(**own) if own else limits


def keep_alive_problem(value: object) -> str | None:
    """What is wrong with `value` as a keep-alive timeout in seconds, or None if it will do."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_KEEP_ALIVE_TIMEOUT_SEC:
        shown = _kind(value) if not isinstance(value, float) else f"{value:g}"
        return f"expected a number of seconds greater than 0 and at most {MAX_KEEP_ALIVE_TIMEOUT_SEC:g}, got {shown}"
    return None


def parse_workers(value: object, *, text: bool = False) -> Workers:
    """`[edge_runtime] workers` (an integer or "auto") → a count or "auto"; with `text`, the
    `--workers` flag's string ("4", "auto").

    ValueError says what is wrong: anything but a whole number from 1 to MAX_SERVING_PROCESSES
    or "auto" (in config.toml a number in quotes too: the file says `workers = 4`).
    """
    expected = f"expected a whole number from 1 to {MAX_SERVING_PROCESSES}, or auto"
    if value == "auto":
        return "auto"
    count: object = value
    if text and isinstance(value, str) and re.fullmatch(r"[0-9]{1,6}", value.strip()):
        count = int(value)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_SERVING_PROCESSES:
        raise ValueError(f"{expected}, got {_kind(value)}")
    return count


def parse_uid_range(value: Any) -> tuple[int, int]:
    """`[first, last]` (a TOML array of two uids) → (first, last); ValueError says what is wrong."""
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ValueError(f"expected [first, last] (two uids), got {value!r}")
    first, last = value
    if not 1 <= first <= last <= MAX_UID:
        raise ValueError(f"expected 1 <= first <= last <= {MAX_UID}, got [{first}, {last}]")
    return first, last


def find_config(functions_dir: Path, explicit: Path | None) -> Path | None:
    """`explicit` if given (it must exist), else `<functions_dir>/../config.toml` if present."""
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"--config: config file {explicit} does not exist")
        return explicit
    candidate = functions_dir.parent / "config.toml"
    return candidate if candidate.is_file() else None


class _Reader:
    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}")

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a table, got {_kind(value)}")
        return value

    def check_keys(self, table: Mapping[str, Any], section: str, allowed: frozenset[str] | set[str]) -> None:
        for key in table:
            if key not in allowed:
                raise self.error(f"[{section}] {key}", f"unknown key; expected one of {', '.join(sorted(allowed))}")

    def boolean(self, table: Mapping[str, Any], section: str, key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"[{section}] {key}", f"expected true or false, got {_kind(value)}")
        return value

    def string(self, table: Mapping[str, Any], section: str, key: str, default: str | None) -> str | None:
        value = table.get(key, default)
        if value is not None and not isinstance(value, str):
            raise self.error(f"[{section}] {key}", f"expected a string, got {_kind(value)}")
        return value

    def choice(self, table: Mapping[str, Any], section: str, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(table, section, key, default)
        if value not in choices:
            raise self.error(f"[{section}] {key}", f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def limits(self, table: Mapping[str, Any], section: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for key in LIMIT_KEYS:
            if key in table:
                value = table[key]
                if limit_problem(key, value) is not None:
                    raise self.error(
                        f"[{section}] {key}",
                        f"expected a number greater than 0 and at most {LIMIT_MAXIMUMS[key]:.0f}, got {_kind(value)}",
                    )
                found[key] = float(value)
        return found


def _kind(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _toml_key(key: str) -> str:
    """`key` as config.toml would spell it: bare, or quoted (with escapes) when it is not a bare key."""
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _not_json(value: Any, where: str) -> str | None:
    """The first part of the TOML value `value` (at `where`) that JSON cannot hold, as
    "where = value: reason"; None when all of it can."""
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = [(f"{where}.{_toml_key(str(k))}", v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"{where}[{index}]", v) for index, v in enumerate(value)]
    elif isinstance(value, float) and not math.isfinite(value):
        return f"{where} = {value!r}: JSON has no nan or inf"
    elif value is None or isinstance(value, str | int | float):
        return None
    else:  # a TOML date, time or datetime
        shown = value.isoformat() if isinstance(value, datetime.date | datetime.time) else repr(value)
        return f"{where} = {shown}: JSON has no dates or times; write it as a string"
    for inner, item in items:
        problem = _not_json(item, inner)
        if problem is not None:
            return problem
    return None


def resolve_secret(value: str, environ: Mapping[str, str]) -> str | None:
    """`env(NAME)` → the value of NAME in `environ` (None when unset); anything else as written."""
    match = _ENV_REF.match(value.strip())
    if match is None:
        return value
    return environ.get(match.group("name"))


def _signing_keys(r: _Reader, path: Path) -> tuple[Mapping[str, Any], ...]:
    """The private JWKs of `[auth] signing_keys_path` (a JSON array, as `supabase gen signing-key` writes)."""
    import jwt  # only projects with signing keys pay for importing it at start-up

    key = "[auth] signing_keys_path"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise r.error(key, f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise r.error(key, f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        data = data.get("keys")
    if not isinstance(data, list) or not data:
        raise r.error(key, f"{path}: expected a JSON array of private JWKs")
    for index, jwk in enumerate(data):
        problem = None
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("EC", "RSA") or "d" not in jwk:
            problem = "expected a private EC (ES256) or RSA (RS256) JWK"
        else:
            try:
                jwt.PyJWK(jwk, algorithm="ES256" if jwk["kty"] == "EC" else "RS256")
            except jwt.PyJWTError as exc:
                problem = str(exc)
        if problem is not None:
            raise r.error(key, f"{path}: key {index}: {problem}")
    return tuple(data)


def _cors_origins(r: _Reader, table: Mapping[str, Any]) -> tuple[str, ...]:
    key = "[edge_runtime] cors_origins"
    entries = table.get("cors_origins", ["*"])
    if not isinstance(entries, list):
        raise r.error(
            key, f'expected an array of origins like ["*"] or ["https://app.example.com"], got {_kind(entries)}'
        )
    origins: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise r.error(key, f"expected origins (strings), got {_kind(entry)}")
        normalized = "*" if entry.strip() == "*" else normalize_origin(entry)
        if normalized is None:
            raise r.error(
                key,
                f"expected \"*\" or an origin as browsers send it in Origin, like 'https://app.example.com' or "
                f"'http://localhost:3000' (a scheme and a host, no path), got {entry!r}",
            )
        if normalized not in origins:
            origins.append(normalized)
    return tuple(origins)


def _dashboard(r: _Reader, raw: Any) -> DashboardConfig:
    table = r.table(raw, "[dashboard]")
    r.check_keys(table, "dashboard", {"allowed_hosts"})
    key = "[dashboard] allowed_hosts"
    entries = table.get("allowed_hosts", [])
    if not isinstance(entries, list):
        raise r.error(key, f"expected an array of host names, got {_kind(entries)}")
    hosts: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise r.error(key, f"expected host names (strings), got {_kind(entry)}")
        host = entry.strip().lower()
        if host == "*":
            raise r.error(key, "'*' would serve the dashboard to any Host, as DNS rebinding needs; list the names")
        if not _ALLOWED_HOST.match(host):
            raise r.error(
                key,
                f"expected a host name as clients send it in Host, like 'dash.example.com', "
                f"'dash.example.com:8443' or '*.example.com' (no scheme, no path), got {entry!r}",
            )
        hosts.append(host)
    return DashboardConfig(allowed_hosts=tuple(hosts))


def load_config(path: Path | None, environ: Mapping[str, str] | None = None, *, warn: bool = True) -> ProjectConfig:
    """Read and validate `path`; defaults when `path` is None.

    `warn=False` skips secrets whose variable is unset without the warning line.
    """
    if path is None:
        return ProjectConfig()
    environ = os.environ if environ is None else environ
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text (line {line}, byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    r = _Reader(path)
    r.check_keys(
        data, "top level", FOREIGN_SECTIONS | {"edge_runtime", "auth", "dashboard", "functions", "cron", "jobs"}
    )

    er = r.table(data.get("edge_runtime", {}), "[edge_runtime]")
    own_er = {
        "policy",
        "isolation",
        "secrets",
        "keep_alive_timeout_sec",
        "sandbox",
        "worker_uid_range",
        "inspector_port",
        "cors_origins",
        "workers",
        *LIMIT_KEYS,
    }
    r.check_keys(er, "edge_runtime", own_er | FOREIGN_EDGE_RUNTIME_KEYS)
    policy = er.get("policy", "per_worker")
    if policy == "oneshot":  # the Supabase CLI's other policy: one request per worker
        policy = "per_request"
    policy = r.choice({"policy": policy}, "edge_runtime", "policy", "per_worker", ("per_worker", "per_request"))
    isolation = r.choice(er, "edge_runtime", "isolation", "inline", ("inline", "process"))
    sandbox = r.choice(er, "edge_runtime", "sandbox", "auto", SANDBOX_MODES)
    uid_range = None
    if "worker_uid_range" in er:
        try:
            uid_range = parse_uid_range(er["worker_uid_range"])
        except ValueError as exc:
            raise r.error("[edge_runtime] worker_uid_range", str(exc)) from None
    try:
        limits = DEFAULT_LIMITS.replace(**r.limits(er, "edge_runtime"))
    except ValueError as exc:
        raise r.error("[edge_runtime]", str(exc)) from None
    keep_alive = er.get("keep_alive_timeout_sec", DEFAULT_KEEP_ALIVE_TIMEOUT_SEC)
    problem = keep_alive_problem(keep_alive)
    if problem is not None:
        raise r.error("[edge_runtime] keep_alive_timeout_sec", problem)
    inspector_port = er.get("inspector_port", DEFAULT_INSPECTOR_PORT)
    if isinstance(inspector_port, bool) or not isinstance(inspector_port, int) or not 0 < inspector_port < 65536:
        raise r.error("[edge_runtime] inspector_port", f"expected a TCP port (1-65535), got {inspector_port!r}")
    try:
        workers = parse_workers(er.get("workers", 1))
    except ValueError as exc:
        raise r.error("[edge_runtime] workers", str(exc)) from None

    secrets: dict[str, str] = {}
    for key, value in r.table(er.get("secrets", {}), "[edge_runtime.secrets]").items():
        if not isinstance(value, str):
            raise r.error(f"[edge_runtime.secrets] {key}", f"expected a string, got {_kind(value)}")
        resolved = resolve_secret(value, environ)
        problem = env_problem(key, value if resolved is None else resolved)
        if problem is not None:
            raise r.error(f"[edge_runtime.secrets] {_toml_key(key)}", problem)
        if resolved is None:  # as the Supabase CLI: a secret whose variable is unset is not set at all
            if warn:
                logger.warning("%s: [edge_runtime.secrets] %s: %s is not set, skipping", path, key, value.strip())
            continue
        secrets[key.upper()] = resolved

    auth = r.table(data.get("auth", {}), "[auth]")
    # The demo secret only when the key is absent: `jwt_secret = ""` is a mistake, not a default.
    jwt_secret = cast(str, r.string(auth, "auth", "jwt_secret", DEFAULT_JWT_SECRET))
    if not jwt_secret:
        raise r.error("[auth] jwt_secret", "is empty; leave the key out to use the local demo secret")
    resolved_secret = resolve_secret(jwt_secret, environ)
    if resolved_secret is None:
        raise r.error("[auth] jwt_secret", f"{jwt_secret.strip()} is not set")
    jwt_secret = resolved_secret
    if len(jwt_secret) < 16:
        raise r.error("[auth] jwt_secret", "must be at least 16 characters long")
    signing_keys_path = r.string(auth, "auth", "signing_keys_path", None)
    keys_file = path.parent / signing_keys_path if signing_keys_path else None
    signing_keys = _signing_keys(r, keys_file) if keys_file is not None else ()

    functions: dict[str, FunctionConfig] = {}
    for name, raw in r.table(data.get("functions", {}), "[functions]").items():
        section = f"functions.{name}"
        if not is_valid_slug(name):
            raise r.error(f"[{section}]", "invalid function name: use a letter followed by letters, digits, '-' or '_'")
        table = r.table(raw, f"[{section}]")
        r.check_keys(table, section, {"enabled", "verify_jwt", "description", *LIMIT_KEYS} | FOREIGN_FUNCTION_KEYS)
        own = r.limits(table, section)
        try:
            limits.replace(**own)
        except ValueError as exc:
            raise r.error(f"[{section}]", str(exc)) from None
        functions[name] = FunctionConfig(
            enabled=r.boolean(table, section, "enabled", True),
            verify_jwt=r.boolean(table, section, "verify_jwt", True),
            description=r.string(table, section, "description", None),
            limits=own,
        )

    cron: dict[str, CronConfig] = {}
    cron_keys = {"function", "schedule", "body", "overlap", "timezone", "enabled", "description"}
    for name, raw in r.table(data.get("cron", {}), "[cron]").items():
        section = f"cron.{name}"
        table = r.table(raw, f"[{section}]")
        r.check_keys(table, section, cron_keys)
        for required in ("function", "schedule"):
            if required not in table:
                raise r.error(f"[{section}] {required}", "is required")
        body = r.table(table.get("body", {}), f"[{section}] body")
        problem = _not_json(body, "body")  # sent as JSON at every tick: it must encode
        if problem is not None:
            raise ConfigError(f"{path}: [{section}] {problem}")
        cron[name] = CronConfig(
            name=name,
            function=cast(str, r.string(table, section, "function", None)),
            schedule=cast(str, r.string(table, section, "schedule", None)),
            body=body,
            overlap=r.choice(table, section, "overlap", "skip", CRON_OVERLAP),
            timezone=cast(str, r.string(table, section, "timezone", "UTC")),
            enabled=r.boolean(table, section, "enabled", True),
            description=r.string(table, section, "description", None),
        )

    return ProjectConfig(
        path=path,
        policy=cast(Policy, policy),
        isolation=cast(Isolation, isolation),
        limits=limits,
        secrets=secrets,
        jwt_secret=jwt_secret,
        signing_keys=signing_keys,
        functions=functions,
        cron=cron,
        jobs=r.table(data.get("jobs", {}), "[jobs]"),
        dashboard=_dashboard(r, data.get("dashboard", {})),
        keep_alive_timeout_sec=float(keep_alive),
        inspector_port=inspector_port,
        sandbox=cast(SandboxMode, sandbox),
        worker_uid_range=uid_range,
        signing_keys_path=keys_file,
        cors_origins=_cors_origins(r, er),
        workers=workers,
    )
