"""Progress reporting for long work: a tqdm bar on a terminal, silence in a pipe or when quiet."""

from __future__ import annotations

import os
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
        # stderr closed (`2>&-`, a daemon): Python makes it None, and nothing is shown
        self.enabled = not quiet and sys.stderr is not None and sys.stderr.isatty()
        self._bar: tqdm | None = None

    def note(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def start(self, total: int, unit: str = "tile", desc: str = "") -> None:
        self.close()
        if self.enabled:
            # a terminal that reports no size (a pseudo-terminal opened without one, as some
            # container and job shells do) would get no bar at all from tqdm: 0 columns and
            # no row to draw on; there it is drawn at a fixed size
            sized = _stderr_columns() > 0
            self._bar = tqdm(
                total=total,
                unit=unit,
                desc=desc,
                dynamic_ncols=sized,
                ncols=None if sized else FALLBACK_SIZE[0],
                nrows=None if sized else FALLBACK_SIZE[1],
                leave=True,
            )

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


NO_PROGRESS = NullProgress()
FALLBACK_SIZE = (80, 24)  # columns and rows of a terminal that reports no size


def _stderr_columns() -> int:
    """The width of the terminal on stderr; 0 where it reports none."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):  # not a terminal, or stderr replaced without a descriptor
        return 0
