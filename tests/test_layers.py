"""DESIGN.md's one-way data flow: `wsi` and `models` know nothing of each other, and neither
knows `pipeline` or `flows`; and everything imports our layers through the one import name
`wsi_segment` (never a bare `models` or `pipeline`, which other packages may own). Checked on
the imports of every module, read with `ast`."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("wsi", "models", "pipeline", "flows")
FORBIDDEN = {
    "wsi": {"models", "pipeline", "flows"},
    "models": {"wsi", "pipeline", "flows"},
    "pipeline": {"flows"},
    "flows": set(),
    "wsi_segment": {"wsi", "models", "pipeline", "flows"},
}
# where modules of the project live: the layers, the package, tests and benchmarks
SOURCES = (*LAYERS, "wsi_segment", "tests", "benchmarks", "deploy")


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports stay inside their package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def layers_used(path: Path) -> set[str]:
    """Which of our layers a file imports (`wsi_segment.<layer>...`)."""
    used = set()
    for name in imported_modules(path):
        parts = name.split(".")
        if parts[0] == "wsi_segment" and len(parts) > 1 and parts[1] in LAYERS:
            used.add(parts[1])
    return used


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_the_data_flow_allows(package: str) -> None:
    # wsi_segment/__init__.py (the lazy public API) and __main__.py are doors over every layer;
    # the rest of that folder (errors.py) sits below all layers and imports none
    doors = {ROOT / "wsi_segment" / "__init__.py", ROOT / "wsi_segment" / "__main__.py"}
    modules = sorted(set((ROOT / package).rglob("*.py")) - doors)
    assert modules, f"no modules under {package}/"
    wrong = {str(m.relative_to(ROOT)): sorted(layers_used(m) & FORBIDDEN[package]) for m in modules}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_nothing_imports_a_layer_by_its_bare_name() -> None:
    files = [p for d in SOURCES for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 100
    bare = {
        str(p.relative_to(ROOT)): sorted(
            n for n in imported_modules(p) if n.split(".")[0] in LAYERS
        )
        for p in files
    }
    assert {k: v for k, v in bare.items() if v} == {}


def test_every_package_folder_is_installed_under_wsi_segment() -> None:
    """pyproject lists the packages by hand (the layers are mapped into `wsi_segment`);
    a new subpackage that is not listed would be missing from the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = config["package-dir"]
    assert mapping == {"wsi_segment": "wsi_segment", **{f"wsi_segment.{x}": x for x in LAYERS}}
    on_disk = {"wsi_segment"}
    for layer in LAYERS:
        for init in (ROOT / layer).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / layer).parts
            on_disk.add(".".join(("wsi_segment", layer, *rel)))
    assert set(config["packages"]) == on_disk


def test_the_check_sees_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom wsi_segment.wsi.slide import open_slide\nfrom models import x\n"
        "from . import sibling\n"
    )
    assert imported_modules(bad) == {"os", "wsi_segment.wsi.slide", "models"}
    assert layers_used(bad) == {"wsi"}
