"""The range of pixel sizes a slide may be given (`--mpp`, `SegmentParams.mpp`, `open_slide`).

One range for every door, so the CLI, a flow's parameters and the library refuse the same
values: 0.01 um/px is beyond any light microscope, 100 um/px a slide of a few hundred pixels.
No heavy imports: the CLI checks its options before anything else loads.
"""

from __future__ import annotations

MPP_RANGE = (0.01, 100.0)  # micrometres per level-0 pixel, both ends allowed


def mpp_problem(mpp: float) -> str | None:
    """Why `mpp` cannot be a slide's pixel size (NaN and infinities included), or None."""
    low, high = MPP_RANGE
    if low <= mpp <= high:
        return None
    return (
        f"{mpp} is out of range: micrometres per pixel must be in [{low:g}, {high:g}] "
        "(0.25 at 40x, 0.5 at 20x)"
    )
