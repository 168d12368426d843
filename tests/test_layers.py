"""The one-way data flow of docs/architecture.md: `wsi` and `models` know nothing of each other, and neither
knows `pipeline` or `flows`; and everything imports our layers through the one import name
`wsi_segment` (never a bare `models` or `pipeline`, which other packages may own). Checked on
the imports of every module, read with `ast`."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

from wsi_segment.gc_pause import parse_python

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("wsi", "models", "pipeline", "flows")
PIPELINE_PARTS = ("inference", "outputs", "training")
# read by every part of pipeline
BASE = (
    "params",
    "progress",
    "machine",
    "cpu_quota",
    "run_policy",
    "engine_sizes",
    "read_policy",
    "output_files",
    "cancellation",
    "threads",
)
# unit -> the units it may import (besides itself and wsi_segment's own modules: errors,
# lazy_exports, gc_pause, open_files).
# pipeline is split by concern: inference writes outputs as chunks finish, outputs never
# reach back into inference, training stands beside both; synthetic data is for tests,
# benchmarks and training the demo model, never for a run (it may use wsi's mask helpers).
ALLOWED = {
    "wsi_segment": set(),
    "wsi": set(),
    "models": set(),
    "synthetic": {"wsi"},
    "pipeline.base": {"wsi", "models"},  # --mpp range (wsi); the runtime choice (models)
    "pipeline.outputs": {"wsi", "models", "pipeline.base"},
    "pipeline.inference": {"wsi", "models", "pipeline.base", "pipeline.outputs"},
    "pipeline.training": {"wsi", "models", "pipeline.base", "synthetic"},
    "pipeline": {"wsi", "models", "pipeline.base", "pipeline.outputs", "pipeline.inference"},
    "flows": {
        "wsi",
        "models",
        "pipeline",
        "pipeline.base",
        "pipeline.outputs",
        "pipeline.inference",
        "pipeline.training",
    },
}
# where modules of the project live: the layers, the package, tests and benchmarks
SOURCES = (*LAYERS, "wsi_segment", "tests", "benchmarks", "deploy")
# wsi_segment/__init__.py (the lazy public API) and __main__.py are doors over every layer
DOORS = {ROOT / "wsi_segment" / "__init__.py", ROOT / "wsi_segment" / "__main__.py"}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports stay inside their package)."""
    names: set[str] = set()
    for node in ast.walk(parse_python(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def unit_of(dotted: str) -> str | None:
    """The unit of an installed module name (None: not ours)."""
    parts = dotted.split(".")
    if parts[0] != "wsi_segment":
        return None
    if len(parts) < 2 or parts[1] not in (*LAYERS, "synthetic"):
        return "wsi_segment"
    if parts[1] != "pipeline" or len(parts) < 3:
        return parts[1]
    if parts[2] in PIPELINE_PARTS:
        return f"pipeline.{parts[2]}"
    return "pipeline.base" if parts[2] in BASE else "pipeline"


def unit_of_file(path: Path) -> str:
    """The unit of a source file, from where it lies in the checkout."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    if rel[0] == "wsi_segment":
        return unit_of(".".join(rel)) or "wsi_segment"
    return unit_of(".".join(("wsi_segment", *rel))) or "wsi_segment"


def units_used(path: Path) -> set[str]:
    """Which of our units a file imports."""
    return {u for u in map(unit_of, imported_modules(path)) if u is not None}


def layers_used(path: Path) -> set[str]:
    """Which of our layers a file imports (`wsi_segment.<layer>...`)."""
    return {u.split(".")[0] for u in units_used(path)} & set(LAYERS)


def source_files() -> list[Path]:
    roots = [ROOT / d for d in (*LAYERS, "wsi_segment")]
    return sorted({p for r in roots for p in r.rglob("*.py")} - DOORS)


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_each_unit_imports_only_what_the_data_flow_allows(unit: str) -> None:
    modules = [p for p in source_files() if unit_of_file(p) == unit]
    assert modules, f"no modules in {unit}"
    wrong = {
        str(m.relative_to(ROOT)): sorted(units_used(m) - ALLOWED[unit] - {unit, "wsi_segment"})
        for m in modules
    }
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
    for init in (ROOT / "wsi_segment").rglob("__init__.py"):
        on_disk.add(".".join(init.parent.relative_to(ROOT).parts))
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
    assert unit_of("wsi_segment.pipeline.inference.slide_job") == "pipeline.inference"
    assert unit_of("wsi_segment.pipeline.params") == "pipeline.base"
    assert unit_of("wsi_segment.pipeline.segment") == "pipeline"
    assert unit_of("wsi_segment.synthetic.slides") == "synthetic"
    assert unit_of_file(ROOT / "pipeline" / "outputs" / "ome_zarr.py") == "pipeline.outputs"
    assert unit_of_file(ROOT / "wsi_segment" / "errors.py") == "wsi_segment"
