"""Finding functions and loading each as its own module."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeruntime.functions.discovery import discover, function_for_path
from edgeruntime.functions.slug import is_valid_slug
from edgeruntime.testing import EdgeClient
from tests.helpers import HELLO, write_function


@pytest.mark.parametrize("name", ["hello", "my-new-job", "a", "A_b-9"])
def test_valid_slugs(name: str) -> None:
    assert is_valid_slug(name)


@pytest.mark.parametrize("name", ["", "_shared", ".git", "9lives", "has space", "..", "a/b", "a.b", "x" * 300, "é"])
def test_invalid_slugs(name: str) -> None:
    assert not is_valid_slug(name)


def test_discover_skips_private_and_incomplete_directories(functions_dir: Path) -> None:
    write_function(functions_dir, "hello", HELLO)
    write_function(functions_dir, "_shared", HELLO)
    write_function(functions_dir, ".hidden", HELLO)
    (functions_dir / "empty").mkdir()
    (functions_dir / "notes.txt").write_text("not a function")
    assert list(discover(functions_dir)) == ["hello"]


def test_discover_sorts_by_name_and_resolves_symlinks(functions_dir: Path, tmp_path: Path) -> None:
    for name in ("zeta", "Alpha", "mid"):
        write_function(functions_dir, name, HELLO)
    elsewhere = tmp_path / "elsewhere" / "linked"
    write_function(elsewhere.parent, "linked", HELLO)
    (functions_dir / "linked").symlink_to(elsewhere, target_is_directory=True)
    (functions_dir / "file-link").symlink_to(functions_dir / "mid" / "index.py")
    alias = tmp_path / "alias"
    alias.symlink_to(functions_dir, target_is_directory=True)

    found = discover(alias)  # reached through a symlinked functions directory
    assert list(found) == ["Alpha", "linked", "mid", "zeta"]
    assert found["linked"].directory == elsewhere.resolve()
    assert found["mid"].directory == (functions_dir / "mid").resolve()
    assert found["mid"].entrypoint == (functions_dir / "mid" / "index.py").resolve()


def test_function_for_path(functions_dir: Path) -> None:
    assert function_for_path(functions_dir.resolve(), functions_dir / "hello" / "index.py") == "hello"
    assert function_for_path(functions_dir.resolve(), functions_dir / "_shared" / "cors.py") == "_shared"
    assert function_for_path(functions_dir.resolve(), functions_dir / ".env") is None
    assert function_for_path(functions_dir.resolve(), Path("/etc/passwd")) is None


async def test_shared_code_and_same_names_in_two_functions(functions_dir: Path) -> None:
    (functions_dir / "_shared").mkdir()
    (functions_dir / "_shared" / "cors.py").write_text('CORS_HEADERS = {"Access-Control-Allow-Origin": "*"}\n')
    for name, value in (("one", 1), ("two", 2)):
        write_function(
            functions_dir,
            name,
            f"""
            from starlette.responses import JSONResponse
            from edgeruntime import serve
            from _shared.cors import CORS_HEADERS
            from .settings import VALUE

            NAME = {name!r}

            @serve
            async def handler(req):
                return JSONResponse({{"name": NAME, "value": VALUE}}, headers=CORS_HEADERS)
        """,
        )
        (functions_dir / name / "settings.py").write_text(f"VALUE = {value}\n")
    async with EdgeClient(functions_dir) as client:
        r1, r2 = await client.invoke("one"), await client.invoke("two")
    assert r1.json() == {"name": "one", "value": 1}
    assert r2.json() == {"name": "two", "value": 2}
    assert r1.headers["access-control-allow-origin"] == "*"


async def test_nothing_outside_the_functions_directory_is_imported(functions_dir: Path) -> None:
    outside = functions_dir.parent / "outside"
    write_function(outside, "evil", "raise SystemExit('imported from outside')\n")
    write_function(functions_dir, "hello", HELLO)
    async with EdgeClient(functions_dir) as client:
        for url in ("/functions/v1/../outside/evil", "/functions/v1/..%2Foutside%2Fevil", "/functions/v1/evil"):
            r = await client.request("GET", url, headers=client.headers_for("service_role"))
            assert r.status_code == 404


def test_an_unreadable_function_directory_is_skipped_with_one_warning_naming_it(
    functions_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_function(functions_dir, "hello", HELLO)
    (functions_dir / "loop1").symlink_to("loop1")  # ELOOP, as `ln -s loop1 functions/loop1`
    write_function(functions_dir, "inner", HELLO).unlink()
    (functions_dir / "inner" / "index.py").symlink_to("index.py")  # its index.py a loop
    (functions_dir / "dangling").symlink_to("nowhere")  # not a function, nothing to say
    (functions_dir / ".loop").symlink_to(".loop")  # not a function's name either

    assert list(discover(functions_dir)) == ["hello"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    root = functions_dir.resolve()
    assert warnings == [
        f"skipping function directory {root / 'inner'}: cannot be read (Too many levels of symbolic links)",
        f"skipping function directory {root / 'loop1'}: cannot be read (Too many levels of symbolic links)",
    ]
    caplog.clear()
    assert list(discover(functions_dir)) == ["hello"]  # every reload rescans: said once
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    (functions_dir / "loop1").unlink()
    write_function(functions_dir, "loop1", HELLO)
    assert list(discover(functions_dir)) == ["hello", "loop1"]
    (functions_dir / "loop1" / "index.py").unlink()
    (functions_dir / "loop1" / "index.py").symlink_to("index.py")  # unreadable again: said again
    assert list(discover(functions_dir)) == ["hello"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"skipping function directory {root / 'loop1'}: cannot be read (Too many levels of symbolic links)"
    ]


def test_a_change_in_a_symlink_loop_belongs_to_no_function_rather_than_raising(functions_dir: Path) -> None:
    (functions_dir / "loop1").symlink_to("loop1")
    assert function_for_path(functions_dir.resolve(), functions_dir / "loop1") is None
    write_function(functions_dir, "hello", HELLO)
    (functions_dir / "hello" / "self").symlink_to("self")
    assert function_for_path(functions_dir.resolve(), functions_dir / "hello" / "self") == "hello"
