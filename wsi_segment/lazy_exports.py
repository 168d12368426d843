"""Lazy package exports and function references: entry points without importing torch at
`import` time.

Every layer imports `wsi_segment.errors`, and the CLI loads torch in a background thread
while it detects tissue, so a package `__init__` must not import its heavy modules eagerly,
nor may a registry the CLI reads (`FunctionRef`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`: name -> defining module, loaded on first use."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


@dataclass(frozen=True)
class FunctionRef:
    """A function named `module:name`, imported on its first call.

    A registry that doors read at start-up (the CLI's choices, the model.json check, the
    up-to-date check) holds functions whose modules load torch or zarr: named so, reading
    the registry loads nothing and the function's module loads only where it runs. Plain
    data, so an entry pickles to worker processes."""

    target: str

    def resolve(self) -> Callable[..., Any]:
        """The function itself (its module imported now, once per process)."""
        module, _, name = self.target.partition(":")
        function: Callable[..., Any] = getattr(importlib.import_module(module), name)
        return function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)
