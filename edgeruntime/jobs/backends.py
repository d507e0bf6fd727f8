"""Which store a database URL names: SQLite (the default file beside the functions) or PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

from edgeruntime.exceptions import ConfigError
from edgeruntime.jobs.store import JobStore, redact_url

__all__ = ["default_database_path", "open_store"]


def default_database_path(functions_dir: Path) -> Path:
    """`.edgeruntime/edgeruntime.db` beside the functions directory."""
    return functions_dir.resolve().parent / ".edgeruntime" / "edgeruntime.db"


def open_store(
    url: str | None, functions_dir: Path | None = None, *, source: str = "--database-url", announce: bool = True
) -> JobStore:
    """The store for `url`: `sqlite:///relative.db`, `sqlite:////absolute.db`, `postgresql://...`,
    or None for the default SQLite file beside the functions directory.

    `source` names where `url` came from in the error for a bad one (``--database-url`` or
    ``EDGERUNTIME_DATABASE_URL``). `announce=False`: what holds for every process using the
    store (SQLite's journal mode) is left for another process to say.
    """
    if url is None:
        if functions_dir is None:
            raise ConfigError("database url: none given and no functions directory to put the default in")
        url = "sqlite:///" + str(default_database_path(functions_dir))
    if url.startswith("sqlite://"):
        from edgeruntime.jobs.sqlite import SQLiteStore

        # SQLAlchemy's convention: sqlite:///relative.db and sqlite:////absolute/path.db
        path = url.removeprefix("sqlite://").removeprefix("/")
        if not path:
            raise ConfigError(f"{source} {url!r}: expected sqlite:///path/to/file.db")
        return SQLiteStore(Path(os.path.expanduser(path)), url=url, announce=announce)
    if url.startswith(("postgresql://", "postgres://")):
        from edgeruntime.jobs.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"{source} {redact_url(url)!r}: expected sqlite:///path or postgresql://...")
