"""The docs name only what exists: every `wsi_segment.<module>[.<name>]`, every file path of
the repository, and every function listed in a module table of README.md and docs/*.md."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LAYERS = ("wsi", "models", "pipeline", "flows")
DOTTED = re.compile(r"\b((?:wsi_segment\.)?(?:wsi|models|pipeline|flows)(?:\.[A-Za-z_]\w*)+)")
PATH = re.compile(
    r"\b((?:wsi|models|pipeline|flows|tests|benchmarks|deploy)/[\w/.-]+\.(?:py|yaml|json|md))"
)


def resolve(dotted: str) -> bool:
    """True when `dotted` is an importable module, optionally followed by attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def _full(name: str) -> str:
    return name if name.startswith("wsi_segment.") else f"wsi_segment.{name}"


def _layer_module(file_name: str) -> str | None:
    """`bundle.py` -> `wsi_segment.models.bundle` when exactly one layer has that file."""
    found = [layer for layer in LAYERS if (REPO / layer / file_name).is_file()]
    return f"wsi_segment.{found[0]}.{file_name[:-3]}" if len(found) == 1 else None


def _table_modules(first_cell: str) -> list[str] | None:
    """The modules a table row documents (None: not a module row; []: continue the last)."""
    if first_cell == "":
        return []
    names = re.findall(r"`([^`]+)`", first_cell)
    if names and all(DOTTED.fullmatch(n) for n in names):
        return [_full(n) for n in names]
    if names and all(re.fullmatch(r"\w+\.py", n) for n in names):
        modules = [m for m in map(_layer_module, names) if m is not None]
        return modules if len(modules) == len(names) else None
    return None


def doc_references() -> list[tuple[str, int, str, bool]]:
    """(file, line, name, exists) for every checked name in the docs."""
    refs = []
    for doc in DOCS:
        modules: list[str] | None = None
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            where = doc.relative_to(REPO).as_posix()
            for code in re.findall(r"`([^`]+)`", line):
                refs += [(where, n, m, resolve(_full(m))) for m in DOTTED.findall(code)]
                refs += [(where, n, p, (REPO / p).exists()) for p in PATH.findall(code)]
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not line.startswith("|") or len(cells) < 2:
                modules = None
                continue
            row = _table_modules(cells[0])
            if row is None:
                modules = None
                continue
            modules = row or modules
            for name in re.findall(r"`([A-Za-z_][\w.]*)[(`]", cells[1]) if modules else ():
                found = any(resolve(f"{m}.{name}") for m in modules)
                refs.append((where, n, f"{'/'.join(modules)}: {name}", found))
    return refs


def test_the_checker_sees_tables_paths_and_dotted_names() -> None:
    names = {name for _, _, name, _ in doc_references()}
    assert "wsi_segment.pipeline.outputs.summary: write_summary" in names
    assert any(n.endswith("models.bundle: load_model") for n in names)  # a file table row
    assert "pipeline/segment.py" in names
    assert "wsi_segment.flows.batch_flow.segment_batch" in names
    assert not resolve("wsi_segment.pipeline.atomic")
    assert not resolve("wsi_segment.pipeline.outputs.summary.build_summary")


@pytest.mark.parametrize("doc", [d.relative_to(REPO).as_posix() for d in DOCS])
def test_docs_name_only_what_exists(doc: str) -> None:
    missing = [f"{f}:{n}: {name}" for f, n, name, ok in doc_references() if f == doc and not ok]
    assert missing == []
