"""The code in the docs: the quickstart runs as written, every page's Python compiles and is still
there, and what the pages state is what the code does."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeruntime.config.project import load_config
from edgeruntime.core.events import StopReason
from edgeruntime.jobs.queue import HEARTBEATS_PER_LEASE
from edgeruntime.testing import EdgeClient
from tests.examples.conftest import REPO
from tests.helpers import run_cli, write_function

QUICKSTART = (REPO / "docs" / "quickstart.md").read_text(encoding="utf-8")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", QUICKSTART, flags=re.S)


async def test_quickstart_function_and_test(functions_dir: Path) -> None:
    function, test = blocks("python")
    write_function(functions_dir, "hello-world", function)
    async with EdgeClient(functions_dir) as client:
        r = await client.invoke("hello-world", json={"email": "ada@example.com"})
        assert r.status_code == 202
        assert r.json() == {"accepted": True}
        assert [t.name for t in client.pending()] == ["send_welcome"]
        await client.drain()
    assert 'EdgeClient("functions")' in test and "client.drain()" in test


def test_quickstart_cron_config_is_valid(tmp_path: Path) -> None:
    [toml] = [b for b in blocks("toml") if b.startswith("# config.toml")]
    path = tmp_path / "config.toml"
    path.write_text(toml, encoding="utf-8")
    cron = load_config(path, {}).cron["welcome-digest"]
    assert (cron.function, cron.schedule) == ("hello-world", "0 10 * * *")


def test_quickstart_test_runs_with_the_pytest_config_it_shows(tmp_path: Path) -> None:
    """The quickstart's function, test and pyproject.toml, as a new project: `pytest` passes there."""
    function, test = blocks("python")
    [pyproject] = [b for b in blocks("toml") if b.startswith("# pyproject.toml")]
    assert "[tool.pytest.ini_options]" in pyproject
    write_function(tmp_path / "functions", "hello-world", function)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_hello_world.py").write_text(test, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SUPABASE_"))},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


def test_quickstart_activates_the_venv_before_its_first_bare_edgeruntime() -> None:
    first_command = re.search(r"^edgeruntime ", "\n".join(blocks("sh")), flags=re.M)
    assert first_command is not None
    commands = "\n".join(blocks("sh"))
    activation = commands.find(". .venv/bin/activate")
    assert 0 <= activation < first_command.start(), "a bare `edgeruntime` before `. .venv/bin/activate`"


def test_quickstart_new_command(tmp_path: Path) -> None:
    done = run_cli("new", "hello-world", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "functions" / "hello-world" / "index.py").is_file()


#: Every page of the docs, and the README.
PAGES = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
#: Python blocks a page has at least: a page that loses its examples fails; one that gains some does not.
PYTHON_BLOCKS = {
    "README.md": 2,
    "auth.md": 2,
    "env.md": 1,
    "examples.md": 1,
    "jobs.md": 2,
    "limits.md": 2,
    "porting.md": 18,
    "quickstart.md": 2,
    "runtime.md": 2,
    "testing.md": 3,
    "websockets.md": 6,
}


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_python_snippets_compile(page: Path) -> None:
    snippets = python_blocks(page)
    assert len(snippets) >= PYTHON_BLOCKS.get(page.name, 0), f"{page.name} lost Python examples"
    for number, snippet in enumerate(snippets):
        compile(snippet, f"{page.name} snippet {number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_every_page_with_python_examples_is_counted() -> None:
    with_python = {page.name for page in PAGES if python_blocks(page)}
    assert with_python == set(PYTHON_BLOCKS), "update PYTHON_BLOCKS: pages with Python examples"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_links_to_repo_files_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(((?:\.\./)?[^)#:]+)\)", text):
        assert (page.parent / target).resolve().exists(), f"{page.name}: {target}"


def test_docs_give_the_heartbeat_interval_the_queue_uses() -> None:
    mentions = [
        (page.name, int(divisor))
        for page in sorted((REPO / "docs").glob("*.md"))
        for divisor in re.findall(r"lease_sec / (\d+)", page.read_text(encoding="utf-8"))
    ]
    assert ("jobs.md", HEARTBEATS_PER_LEASE) in mentions
    assert [m for m in mentions if m[1] != HEARTBEATS_PER_LEASE] == []


def test_dashboard_docs_name_the_cut_reasons_the_history_records() -> None:
    text = (REPO / "docs" / "dashboard.md").read_text(encoding="utf-8")
    runs = text[text.index("**Runs**") : text.index("**Queue**")]
    for reason in (StopReason.WALL_CLOCK, StopReason.CPU, StopReason.MEMORY, StopReason.TERMINATION):
        assert f"`{reason}`" in runs, reason
    assert "`shutdown`" not in runs and "`wall_clock`" not in runs


def test_dashboard_allowed_hosts_example_is_valid(tmp_path: Path) -> None:
    text = (REPO / "docs" / "dashboard.md").read_text(encoding="utf-8")
    [example] = [b for b in re.findall(r"```toml\n(.*?)```", text, flags=re.S) if "allowed_hosts" in b]
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(example), encoding="utf-8")
    assert load_config(path, {}).dashboard.allowed_hosts == ("dash.example.com", "*.corp.example:8443")
