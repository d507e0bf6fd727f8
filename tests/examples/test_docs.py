"""The code in the docs: the quickstart runs as written, every page's Python compiles and is still there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from edgeruntime.config.project import load_config
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
    [toml] = blocks("toml")
    path = tmp_path / "config.toml"
    path.write_text(toml, encoding="utf-8")
    cron = load_config(path, {}).cron["welcome-digest"]
    assert (cron.function, cron.schedule) == ("hello-world", "0 10 * * *")


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
