"""A stop landing at a chosen step of a run, for tests of cancellation (prepare's steps,
a training stage's steps)."""

from __future__ import annotations

from wsi_segment.errors import SlideInterrupted
from wsi_segment.pipeline.cancellation import Cancellation


class CancelledAtCheck(Cancellation):
    """A cancellation that cancels itself (an interrupt) at its `at`th check: a batch's stop
    landing at a chosen step of the run."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.checks = at, 0

    def check(self) -> None:
        self.checks += 1
        if self.checks == self.at:
            self.cancel(SlideInterrupted)
        super().check()
