"""Module docstrings name only what exists: the backquoted dotted names (`Slide.thumbnail`,
`flows.dask_cluster`, `resolve()`) and the repository files they cite.

The docs test (test_docs.py) keeps README.md and docs/*.md true; this keeps the first thing a
reader of a module sees true, since a docstring that names a removed function misleads as much
as a stale page.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from wsi_segment.gc_pause import parse_python

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("wsi", "models", "pipeline", "flows")
PACKAGES = (*LAYERS, "wsi_segment")
TOKEN = re.compile(r"`([^`\n]+)`")
NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+(?:\(\))?|[A-Za-z_]\w*\(\)")
PATH = re.compile(
    r"\b((?:wsi|models|pipeline|flows|tests|benchmarks|deploy|docs)/[\w/.-]+\.(?:py|yaml|json|md|sh))"
)
DOC_FILE = re.compile(r"\b([A-Z][\w-]*\.md)\b")
DOC_DIRS = (REPO, REPO / "docs", REPO / "benchmarks")
# The last part of a file name, not an attribute: `summary.json`, `model.safetensors`.
FILE_SUFFIXES = {
    "json", "md", "py", "yaml", "yml", "svs", "tif", "tiff", "zarr", "png", "geojson", "txt",
    "toml", "csv", "gz", "zip", "ndpi", "mrxs", "xml", "sh", "safetensors", "partial", "lock",
    "dcm", "log", "onnx", "bin", "qpdata", "qpproj", "groovy",
}  # fmt: skip
# Names outside Python that docstrings cite on purpose: QuPath's Java API, GeoJSON keys,
# OpenCV (what we do not use, named to say why), Dask config keys, keys of a flow's `options`.
FOREIGN = (
    "PathIO.", "properties.", "cv2.", "distributed.worker.", "GeneralTools.", "options.",
    "DefaultProject.", "ColorTools.",
)  # fmt: skip


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] in LAYERS:
        parts.insert(0, "wsi_segment")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_files() -> list[Path]:
    return [
        p
        for package in PACKAGES
        for p in sorted((REPO / package).rglob("*.py"))
        if p.name != "__main__.py"
    ]


@cache
def _top_level_names() -> dict[str, list[object]]:
    """Every class, function and module defined in the package, by its bare name."""
    index: dict[str, list[object]] = {}
    for path in package_files():
        module = importlib.import_module(_module_name(path))
        index.setdefault(_module_name(path).rsplit(".", 1)[-1], []).append(module)
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) == module.__name__:
                index.setdefault(name, []).append(obj)
    return index


_MISSING = object()
_UNKNOWN = object()  # exists, but only on instances


def _has(obj: object, name: str) -> object:
    """`obj.name`, counting dataclass fields and attributes a class sets on `self`."""
    if hasattr(obj, name):
        return getattr(obj, name)
    if inspect.isclass(obj):
        fields = (
            {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
        )
        if name in fields or name in getattr(obj, "__annotations__", {}):
            return _UNKNOWN
        if re.search(rf"\bself\.{name}\b", inspect.getsource(obj)):
            return _UNKNOWN
    return _MISSING


def _chain(obj: object, parts: list[str]) -> bool:
    for part in parts:
        found = _has(obj, part)
        if found is _MISSING:
            return False
        obj = found
    return True


def resolves(dotted: str, module: ModuleType) -> bool:
    """True when `dotted` names something from `module`'s view, the package or an import."""
    parts = dotted.removesuffix("()").split(".")
    if _chain(module, parts):
        return True
    package = module.__name__.rsplit(".", 1)[0]
    for i in range(len(parts), 0, -1):
        for prefix in ("wsi_segment.", f"{package}.", ""):
            try:
                head = importlib.import_module(prefix + ".".join(parts[:i]))
            except ImportError:
                continue
            if _chain(head, parts[i:]):
                return True
    return any(_chain(obj, parts[1:]) for obj in _top_level_names().get(parts[0], []))


def docstring_references(path: Path) -> list[tuple[str, bool]]:
    """(name, exists) for every checked name in `path`'s module docstring (files only outside
    the package: tests and benchmarks are not imported)."""
    doc = ast.get_docstring(parse_python(path.read_text(), str(path))) or ""
    refs = [(m, (REPO / m).exists()) for m in PATH.findall(doc)]
    refs += [(m, any((d / m).exists() for d in DOC_DIRS)) for m in DOC_FILE.findall(doc)]
    if path.parts[len(REPO.parts)] not in PACKAGES:
        return refs
    module = importlib.import_module(_module_name(path))
    for token in TOKEN.findall(doc):
        if not NAME.fullmatch(token) or token.startswith(FOREIGN):
            continue
        if token.rsplit(".", 1)[-1] in FILE_SUFFIXES:
            continue
        refs.append((token, resolves(token, module)))
    return refs


def test_the_checker_sees_names_and_files() -> None:
    slide = importlib.import_module("wsi_segment.wsi.slide")
    assert resolves("Slide.thumbnail", slide)
    assert resolves("SegmentParams.mpp", slide)  # a dataclass field, from another layer
    assert resolves("SegmentationModel.classifier", slide)  # set on self in __init__
    assert resolves("flows.dask_cluster", slide)
    assert not resolves("Slide.thumbnail_of_everything", slide)
    assert not resolves("pipeline.inference.run_chunks", slide)
    names = {n for n, _ in docstring_references(REPO / "pipeline" / "inference" / "band_task.py")}
    assert "flows.dask_cluster" in names


@pytest.mark.parametrize(
    "path",
    [
        p.relative_to(REPO).as_posix()
        for p in [
            *package_files(),
            *sorted(REPO.glob("tests/**/*.py")),
            *REPO.glob("benchmarks/*.py"),
        ]
    ],
)
def test_module_docstrings_name_only_what_exists(path: str) -> None:
    missing = [name for name, ok in docstring_references(REPO / path) if not ok]
    assert missing == []
