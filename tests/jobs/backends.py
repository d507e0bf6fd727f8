"""Where the Postgres tests find their server."""

from __future__ import annotations

import os

import pytest


def postgres_url_or_skip() -> str:
    """EDGERUNTIME_TEST_DATABASE_URL; skip when unset, fail when EDGERUNTIME_REQUIRE_POSTGRES=1."""
    url = os.environ.get("EDGERUNTIME_TEST_DATABASE_URL")
    if url:
        return url
    if os.environ.get("EDGERUNTIME_REQUIRE_POSTGRES") == "1":
        pytest.fail("EDGERUNTIME_REQUIRE_POSTGRES=1 but EDGERUNTIME_TEST_DATABASE_URL is not set")
    pytest.skip("Postgres tests need EDGERUNTIME_TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)")
