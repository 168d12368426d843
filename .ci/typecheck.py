"""Run mypy on the project under its installed module names (`wsi_segment.wsi.slide`, ...).

The layers live in top-level folders (`wsi/`, `models/`, ...) that setuptools installs inside
`wsi_segment` through `[tool.setuptools.package-dir]`. mypy resolves modules by path and
cannot follow that mapping, nor the import hook of an editable install; called on the folders
it would name the modules `wsi.slide`, and `import wsi_segment.wsi.slide` would not resolve.
So this script reads the mapping from pyproject.toml, names every source file as the wheel
would, and hands mypy that list. Settings come from `[tool.mypy]` in pyproject.toml; extra
arguments are passed to mypy (e.g. `--no-incremental`). Exit status is mypy's.
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from pathlib import Path

from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build
from mypy.modulefinder import BuildSource
from mypy.util import count_stats

ROOT = Path(__file__).resolve().parent.parent
# folders of scripts (not installed) checked as well, as modules named <folder>.<stem>
SCRIPT_FOLDERS = ("deploy", "benchmarks")


def module_sources(root: Path) -> list[BuildSource]:
    """One BuildSource per .py file of every mapped package, named as installed."""
    config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    mapping: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    sources: list[BuildSource] = []
    for package, folder_name in sorted(mapping.items()):
        folder = root / folder_name
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            sources.append(BuildSource(str(path.relative_to(root)), name))
    for folder_name in SCRIPT_FOLDERS:  # scripts that call the package: a changed signature
        for path in sorted((root / folder_name).glob("*.py")):
            sources.append(BuildSource(str(path.relative_to(root)), f"{folder_name}.{path.stem}"))
    return sources


def main(argv: list[str]) -> int:
    """Type-check every mapped package; print mypy's messages and its summary line."""
    os.chdir(ROOT)  # messages name files relative to the repository root
    fscache = FileSystemCache()
    _, options = process_options(
        ["--config-file", str(ROOT / "pyproject.toml"), *argv],
        require_targets=False,
        fscache=fscache,
    )
    sources = module_sources(ROOT)
    _, messages, blockers = run_build(
        sources, options, fscache, time.time(), sys.stdout, sys.stderr
    )
    n_errors, _, n_files = count_stats(messages)
    if n_errors:
        print(f"Found {n_errors} errors in {n_files} files (checked {len(sources)} source files)")
        return 2 if blockers else 1
    print(f"Success: no issues found in {len(sources)} source files")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
