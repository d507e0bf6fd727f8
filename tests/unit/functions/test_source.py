"""Checking a function's files by compiling them: syntax errors with file and line, nothing run."""

from __future__ import annotations

from pathlib import Path

from edgeruntime.functions.discovery import FunctionSpec
from edgeruntime.functions.source import SourceError, check_source


def function(tmp_path: Path, files: dict[str, str]) -> FunctionSpec:
    directory = tmp_path / "fn"
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return FunctionSpec("fn", directory)


def test_a_function_that_compiles_has_no_error_and_none_of_its_code_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    spec = function(tmp_path, {"index.py": f"open({str(marker)!r}, 'w').close()\n", "lib/db.py": "X = 1\n"})
    assert check_source(spec) is None
    assert not marker.exists()


def test_a_syntax_error_is_reported_with_its_file_and_line(tmp_path: Path) -> None:
    spec = function(tmp_path, {"index.py": "import os\n\ndef handler(req)\n    pass\n"})
    error = check_source(spec)
    assert error == SourceError(spec.entrypoint, 3, "SyntaxError: expected ':'")
    assert str(error) == f"SyntaxError: expected ':' ({spec.entrypoint}, line 3)"


def test_the_error_of_index_py_comes_first_then_the_other_files_in_order(tmp_path: Path) -> None:
    spec = function(tmp_path, {"a.py": "def (\n", "index.py": "x = 1\n  y = 2\n", "z/b.py": "return 1\n"})
    error = check_source(spec)
    assert error is not None and (error.path, error.line) == (spec.entrypoint, 2)
    assert error.message.startswith("IndentationError")
    (spec.directory / "index.py").write_text("x = 1\n")
    error = check_source(spec)
    assert error is not None and error.path == spec.directory / "a.py"
    (spec.directory / "a.py").write_text("\n")
    error = check_source(spec)
    assert error is not None and (error.path.name, error.line) == ("b.py", 1)
    assert error.message == "SyntaxError: 'return' outside function"


def test_caches_and_hidden_directories_are_not_checked(tmp_path: Path) -> None:
    spec = function(tmp_path, {"index.py": "x = 1\n", "__pycache__/old.py": "def (\n", ".venv/lib/x.py": "def (\n"})
    assert check_source(spec) is None


def test_a_nul_byte_is_an_error_too(tmp_path: Path) -> None:
    spec = function(tmp_path, {"index.py": "x = 1\n"})
    spec.entrypoint.write_bytes(b"x = 1\x00\n")
    error = check_source(spec)
    assert error is not None and error.path == spec.entrypoint and "null bytes" in error.message
