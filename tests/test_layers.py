"""DESIGN.md's one-way data flow: `wsi` and `models` know nothing of each other, and neither
knows `pipeline` or `flows`. Checked on the imports of every module, read with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "wsi": {"models", "pipeline", "flows"},
    "models": {"wsi", "pipeline", "flows"},
    "pipeline": {"flows"},
    "wsi_segment": {"wsi", "models", "pipeline", "flows"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names a module imports (absolute imports; relative ones stay inside)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_data_flow_allows(package: str) -> None:
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules under {package}/"
    wrong = {
        str(m.relative_to(ROOT)): sorted(imported_packages(m) & FORBIDDEN[package]) for m in modules
    }
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom wsi.slide import open_slide\nfrom . import sibling\n")
    assert imported_packages(bad) == {"os", "wsi"}
