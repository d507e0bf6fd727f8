"""docs/architecture.md matches the tree and the import-linter contract that `make lint` checks."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "edgeruntime"
DOC = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")


def layer_rows() -> list[list[str]]:
    """The paths in the first cell of each row of the Layers table, top layer first."""
    section = DOC.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "edgeruntime/" in line]
    return [re.findall(r"`edgeruntime/([\w/]+?)(?:\.py)?/?`", row.split(" | ")[0]) for row in rows]


def test_every_subpackage_and_top_level_module_is_in_one_layer_and_nothing_else_is() -> None:
    named = [name for row in layer_rows() for name in row]
    assert len(named) == len(set(named)), "a module in two layers"
    actual = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    actual |= {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert set(named) == actual


def test_the_layers_are_in_the_order_of_the_import_linter_contract() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    [contract] = [c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers"]
    layers = [set(re.split(r"\s*[:|]\s*", layer)) for layer in contract["layers"]]
    assert [set(row) for row in layer_rows()] == layers


def test_every_file_the_doc_names_exists() -> None:
    for path in re.findall(r"`((?:core|functions|config|workers|gateway|jobs|dashboard|serving)/[\w/]+\.py)`", DOC):
        assert (PACKAGE / path).is_file(), path
    for path in re.findall(r"`(tests/[\w/]+/)`", DOC):
        assert (REPO / path).is_dir(), path
