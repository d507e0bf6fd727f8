"""Headless Chromium for the browser tests, driven with playwright.

Needs Debian's `chromium` and the `playwright` Python package (`pip install 'edgeruntime[browser]'`;
never `playwright install`: the system browser is used). `.ci/run` installs both; elsewhere a
browser test is skipped with the reason, and fails instead with EDGERUNTIME_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path(os.environ.get("EDGERUNTIME_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: Generous: the machine running the suite may be busy.
TIMEOUT_MS = 20_000


def missing(reason: str) -> None:
    """Skip for `reason`; fail instead when EDGERUNTIME_REQUIRE_BROWSER=1 (CI)."""
    if os.environ.get("EDGERUNTIME_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (EDGERUNTIME_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def browser_or_skip() -> None:
    """Skip without Chromium or playwright (fail with EDGERUNTIME_REQUIRE_BROWSER=1)."""
    if not CHROMIUM.exists():
        missing(f"the browser test needs Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    elif importlib.util.find_spec("playwright") is None:
        missing("the browser test needs playwright: pip install 'edgeruntime[browser]'")


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A page of a fresh headless Chromium (closed on exit)."""
    browser_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()
