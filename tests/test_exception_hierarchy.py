"""One exception hierarchy: every exception class of the package is defined in
`wsi_segment/errors.py`, but for the few listed in STAYING, each with the reason it stays
where it is.

Modules are read, not imported (so the check costs no torch or Prefect): a class is an
exception when one of its bases (the last part of a dotted name) is a built-in exception,
ends in "Error" or "Exception", is Prefect's `TerminationSignal`, or is itself a class found
to be an exception, in any module of the package.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

from wsi_segment.gc_pause import parse_python

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("wsi", "models", "pipeline", "flows", "wsi_segment")
ERRORS = "wsi_segment/errors.py"
BUILTIN_EXCEPTIONS = frozenset(
    name
    for name in dir(builtins)
    if isinstance(getattr(builtins, name), type)
    and issubclass(getattr(builtins, name), BaseException)
)
FOREIGN_EXCEPTIONS = frozenset({"TerminationSignal"})  # prefect.exceptions
STAYING = {
    ("pipeline/outputs/slide_entries.py", "_Unusable"): "control flow of that one module",
    ("pipeline/inference/engine_state.py", "Stopped"): "the engine's parts' own control "
    "flow, never raised out of run_engine; moving it means editing pipeline/inference/",
    ("flows/batch_flow.py", "BatchFailedError"): "carries pipeline SlideResults, which "
    "errors.py (importing nothing of ours) cannot name",
    ("flows/batch_interrupt.py", "BatchInterrupted"): "carries pipeline SlideResults; the "
    "pair of BatchTerminated",
    ("flows/batch_flow.py", "BatchTerminated"): "a Prefect TerminationSignal, which "
    "errors.py (imported by wsi/ and models/) cannot import",
}


def _base_name(node: ast.expr) -> str:
    """The last part of a base's name (`errors.RoiError` -> `RoiError`); "" if not a name."""
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def class_bases(paths: list[Path], root: Path) -> dict[tuple[str, str], set[str]]:
    """(file relative to `root`, class name) -> the names of its bases, for every class."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in paths:
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(parse_python(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                found[rel, node.name] = {_base_name(b) for b in node.bases}
    return found


def exception_classes(classes: dict[tuple[str, str], set[str]]) -> set[tuple[str, str]]:
    """The classes that are exceptions, by their bases, to a fixed point."""
    known = set(BUILTIN_EXCEPTIONS | FOREIGN_EXCEPTIONS)
    found: set[tuple[str, str]] = set()
    while True:
        more = {
            key
            for key, bases in classes.items()
            if key not in found
            and any(b in known or b.endswith(("Error", "Exception")) for b in bases)
        }
        if not more:
            return found
        found |= more
        known |= {name for _, name in more}


def package_files() -> list[Path]:
    return sorted(p for folder in PACKAGE_FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_every_exception_is_defined_in_errors_py_or_says_why_not() -> None:
    found = exception_classes(class_bases(package_files(), ROOT))
    elsewhere = {key for key in found if key[0] != ERRORS}
    assert elsewhere == set(STAYING)
    assert ("wsi_segment/errors.py", "WsiSegmentError") in found


def test_the_check_sees_exceptions_through_their_bases(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text(
        "from wsi_segment import errors\n"
        "class Plain: ...\n"
        "class Bad(ValueError): ...\n"
        "class Worse(Bad): ...\n"
        "class Ours(errors.RoiError): ...\n"
        "class Stop(TerminationSignal): ...\n"
        "class Mixed(Plain, KeyboardInterrupt): ...\n"
    )
    (tmp_path / "b.py").write_text("from a import Worse\nclass Worst(Worse): ...\n")
    found = exception_classes(class_bases(sorted(tmp_path.glob("*.py")), tmp_path))
    assert {name for _, name in found} == {"Bad", "Worse", "Ours", "Stop", "Mixed", "Worst"}
