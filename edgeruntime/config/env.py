"""The env a function sees, built as `supabase functions serve` builds it.

Lowest to highest: the server's own environment, ``[edge_runtime.secrets]`` from config.toml, the
env file (``<functions dir>/.env``, or ``--env-file`` instead of it), then the injected
``SUPABASE_*`` variables. User variables whose names start with ``SUPABASE_`` are dropped with one
warning line each, as the Supabase CLI does.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from edgeruntime.config.keys import Keys
from edgeruntime.exceptions import ConfigError

if TYPE_CHECKING:
    from dotenv.parser import Original

__all__ = [
    "applied_env",
    "apply_env",
    "build_env",
    "env_problem",
    "read_env_file",
    "restore_env",
    "runtime_environ",
    "withheld_environ",
]

logger = logging.getLogger("edgeruntime")

RESERVED_PREFIX = "SUPABASE_"
#: Never forwarded from the server's environment (the CLI drops these too).
HIDDEN_PREFIX = "SUPABASE_INTERNAL_"
ENV_FILE = ".env"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
#: What is said of a statement of an env file that cannot be parsed, after its file and line.
_UNPARSED = "cannot be parsed (expected NAME=VALUE), skipping it"
#: A line break as python-dotenv counts them.
_NEWLINE = re.compile(r"\r\n|\n|\r")

#: Variables of the server's environment a worker process needs to run; none of them a secret.
RUNTIME_ENV = frozenset(
    {
        "PATH",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "LD_LIBRARY_PATH",
        "VIRTUAL_ENV",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
        "all_proxy",
    }
)
RUNTIME_ENV_PREFIXES = ("LC_", "PYTHON")
#: The env names `edgeruntime` injects: a server's environment may set them (e.g. SUPABASE_URL).
INJECTED_ENV = frozenset(
    {
        "SUPABASE_URL",
        "SUPABASE_ANON_KEY",
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_DB_URL",
        "SUPABASE_JWKS",
        "SUPABASE_PUBLISHABLE_KEYS",
        "SUPABASE_SECRET_KEYS",
    }
)


def env_problem(name: str, value: str) -> str | None:
    """Why `name`=`value` cannot be put in a process environment, or None if it can: a name is
    non-empty, without '=' and NUL; a value has no NUL."""
    if not name:
        return "an env name must not be empty"
    if "=" in name:
        return "an env name must not contain '='"
    if "\x00" in name:
        return "an env name must not contain a NUL character"
    if "\x00" in value:
        return "an env value must not contain a NUL character"
    return None


def read_env_file(path: Path, problems: list[str] | None = None) -> dict[str, str]:
    """Parse a dotenv file; a missing file, or a name or value no environment can hold, is a
    ConfigError naming it.

    A statement that cannot be parsed is skipped (the rest of the file is read), and said as one
    line naming the file and the line it is on: appended to `problems` when given, else logged.
    """
    if not path.is_file():
        raise ConfigError(f"env file {path} does not exist")
    # What python-dotenv's dotenv_values(path, interpolate=False) reads, without its warning for a
    # statement it cannot parse: that one names neither the file nor, after blank lines, the line.
    from dotenv.parser import parse_stream  # its regexes cost start-up time in projects without a .env

    values: dict[str, str | None] = {}
    unparsed: list[str] = []
    try:
        with open(path, encoding="utf-8") as stream:
            for binding in parse_stream(stream):
                if binding.error:
                    unparsed.append(f"{path}: line {_statement_line(binding.original)}: {_UNPARSED}")
                elif binding.key is not None:
                    values[binding.key] = binding.value
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"env file {path} cannot be read: {exc}") from None
    if problems is not None:
        problems.extend(unparsed)
    else:
        for line in unparsed:
            logger.warning("%s", line)
    found = {k: v for k, v in values.items() if v is not None}
    for name, value in found.items():
        problem = env_problem(name, value)
        if problem is not None:
            raise ConfigError(f"env file {path}: {name!r}: {problem}")
    return found


def _statement_line(original: Original) -> int:
    """The line a statement python-dotenv could not parse is on: its `original.line` is where the
    blank lines before the statement start."""
    text = original.string
    blank = text[: len(text) - len(text.lstrip())]
    return original.line + len(_NEWLINE.findall(blank))


def runtime_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The part of `environ` a worker process needs to run (see RUNTIME_ENV)."""
    return {k: v for k, v in environ.items() if k in RUNTIME_ENV or k.startswith(RUNTIME_ENV_PREFIXES)}


def withheld_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """What of the server's `environ` a sandboxed function's env is built from: the runtime's
    needs and the injected names it overrides; the rest (the server's secrets) stays out."""
    kept = runtime_environ(environ)
    kept.update({k: v for k, v in environ.items() if k in INJECTED_ENV})
    return kept


def _drop_reserved(values: Mapping[str, str], warned: set[str], warn: bool) -> dict[str, str]:
    kept: dict[str, str] = {}
    for name, value in values.items():
        if name.upper().startswith(RESERVED_PREFIX):
            if warn and name not in warned:  # one line per name, even when it is in config.toml and .env
                warned.add(name)
                logger.warning("Env name cannot start with SUPABASE_, skipping: %s", name)
            continue
        kept[name] = value
    return kept


def build_env(
    *,
    environ: Mapping[str, str],
    functions_dir: Path,
    keys: Keys,
    base_url: str,
    secrets: Mapping[str, str] | None = None,
    env_file: Path | None = None,
    database_url: str | None = None,
    warn: bool = True,
    problems: list[str] | None = None,
) -> dict[str, str]:
    """The complete env of every function of a server.

    `database_url` (``--database-url``) becomes ``SUPABASE_DB_URL`` when it is a PostgreSQL URL,
    as the Supabase CLI hands functions the project database. `warn=False` drops reserved names
    without a warning. The env file's statements that cannot be parsed are appended to
    `problems` when it is given, else logged when `warn` (see :func:`read_env_file`).
    """
    env = {k: v for k, v in environ.items() if not k.startswith(HIDDEN_PREFIX)}
    warned: set[str] = set()
    if secrets:
        env.update(_drop_reserved(secrets, warned, warn))
    file = env_file if env_file is not None else functions_dir / ENV_FILE
    if env_file is not None or file.is_file():
        said = problems if problems is not None else (None if warn else [])  # None: logged
        env.update(_drop_reserved(read_env_file(file, said), warned, warn))
    env.setdefault("SUPABASE_URL", base_url)
    if database_url and database_url.startswith(POSTGRES_SCHEMES):
        env.setdefault("SUPABASE_DB_URL", database_url)
    env.setdefault("SUPABASE_ANON_KEY", keys.anon_key)
    env.setdefault("SUPABASE_SERVICE_ROLE_KEY", keys.service_role_key)
    env.setdefault("SUPABASE_JWKS", keys.jwks)
    env.setdefault("SUPABASE_PUBLISHABLE_KEYS", f'{{"default":"{keys.publishable_key}"}}')
    env.setdefault("SUPABASE_SECRET_KEYS", f'{{"default":"{keys.secret_key}"}}')
    return env


def apply_env(env: Mapping[str, str], target: MutableMapping[str, str] | None = None) -> dict[str, str | None]:
    """Make `target` (``os.environ``) hold exactly `env`, so ``os.environ.get`` agrees with ``Deno.env.get``.

    Returns what is needed to undo it: the previous value of every name it changed (None: unset).
    """
    target = os.environ if target is None else target
    previous: dict[str, str | None] = {}
    for name in [n for n in target if n not in env]:
        previous[name] = target.pop(name)
    for name, value in env.items():
        old = target.get(name)
        if old != value:
            previous[name] = old
            target[name] = value
    return previous


def restore_env(previous: Mapping[str, str | None], target: MutableMapping[str, str] | None = None) -> None:
    """Undo :func:`apply_env`."""
    target = os.environ if target is None else target
    for name, value in previous.items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value


@contextmanager
def applied_env(env: Mapping[str, str], target: MutableMapping[str, str] | None = None) -> Iterator[None]:
    """``os.environ`` holds exactly `env` inside the block and is restored exactly on exit."""
    previous = apply_env(env, target)
    try:
        yield
    finally:
        restore_env(previous, target)
