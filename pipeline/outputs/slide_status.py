"""What the morning report calls a slide: the statuses of its entries (`slide_entries`), in
the order the page lists them, and which of them need a look."""

from __future__ import annotations

FAILED, KNOWN, DAMAGED, UNREADABLE, FOREIGN, NEWER, IN_PROGRESS, STOPPED = (
    "failed",
    "known failure",
    "damaged summary",
    "unreadable summary",
    "not ours",
    "newer schema",
    "in progress",
    "stopped",
)
OLDER, QUEUED, UP_TO_DATE, DONE = "older schema", "queued", "up to date", "done"
STATUS_ORDER = (
    FAILED,
    KNOWN,
    DAMAGED,
    UNREADABLE,
    FOREIGN,
    NEWER,
    IN_PROGRESS,
    STOPPED,
    OLDER,
    QUEUED,
    UP_TO_DATE,
    DONE,
)
PROBLEMS = frozenset(STATUS_ORDER[: STATUS_ORDER.index(OLDER) + 1])  # failures first
# tonight's batch statuses (pipeline.segment.SlideResult) -> what the report calls them
BATCH_STATUS = {"up-to-date": UP_TO_DATE, "known-failure": KNOWN, "failed": FAILED}
EMPTY_TISSUE = ("none", "fluorescence?")  # summary.json tissue.status of a run with no result
# the report's tally for done slides without a result, counted apart from those with one
EMPTY_DONE = "empty (no tissue or fluorescence?)"
