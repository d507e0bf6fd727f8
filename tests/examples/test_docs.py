"""The code in docs/quickstart.md runs as written."""

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


@pytest.mark.parametrize("page", ["quickstart.md", "porting.md", "examples.md", "semantics.md", "deployment.md"])
def test_python_snippets_compile(page: str) -> None:
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    for number, snippet in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S)):
        compile(snippet, f"{page} snippet {number}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("page", ["quickstart.md", "porting.md", "examples.md", "semantics.md", "deployment.md"])
def test_links_to_repo_files_resolve(page: str) -> None:
    text = (REPO / "docs" / page).read_text(encoding="utf-8")
    for target in re.findall(r"\]\((\.\./[^)#]+)\)", text):
        assert (REPO / "docs" / target).resolve().exists(), f"{page}: {target}"
