"""Progress reporting for long work: a tqdm bar on a terminal, silence in a pipe or when quiet."""

from __future__ import annotations

import sys
from typing import Protocol

from tqdm import tqdm


class Progress(Protocol):
    def note(self, text: str) -> None:
        """One line on what a long wait before the bar is for (the model's load)."""

    def start(self, total: int, unit: str = "tile", desc: str = "") -> None: ...

    def advance(self, n: int) -> None: ...

    def close(self) -> None: ...


class NullProgress:
    """Reports nothing (library calls, flows, tests)."""

    def note(self, text: str) -> None:
        pass

    def start(self, total: int, unit: str = "tile", desc: str = "") -> None:
        pass

    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class BarProgress:
    """tqdm bar (done / total, rate, ETA) shown only when stderr is a terminal and not quiet."""

    def __init__(self, quiet: bool = False) -> None:
        self.enabled = not quiet and sys.stderr.isatty()
        self._bar: tqdm | None = None

    def note(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def start(self, total: int, unit: str = "tile", desc: str = "") -> None:
        self.close()
        if self.enabled:
            self._bar = tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, leave=True)

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


NO_PROGRESS = NullProgress()
