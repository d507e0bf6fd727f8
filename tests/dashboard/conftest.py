"""The dashboard tests reuse the jobs tests' per-backend store URLs (SQLite and Postgres)."""

from __future__ import annotations

from tests.jobs.conftest import postgres_url, store_url

__all__ = ["postgres_url", "store_url"]
