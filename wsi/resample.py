"""Level pixels -> model pixels: PIL's antialiased bilinear reduction, and the same bytes faster.

PIL's resampler defines the pixels every read gives (`wsi.region_reader`). It is scalar C:
on a 2-core CPU running an AMX bf16 model it was ~0.7 of the 1.7 cpu-ms a tile costs to
read. torch's uint8 antialiased bilinear kernel (vectorised for RGB in channels-last
order) computes the same filter in fixed point. At a whole power-of-two scale k its weights
are exact binary fractions ((2k - 2i - 1) / 2k^2), so every fixed-point precision gives the
same sums and rounds them the same way (add half, shift): PIL's bytes by construction, and
checked once per process and scale against PIL on random pixels before it is trusted (a
torch build without the vectorised kernel rounds ties differently; it fails the check and
PIL runs). Other scales keep PIL: their weights are not exact, and the two round them apart.

torch is used only where this process has already loaded it (the model's process); this
module never imports it, so the spawned decoder processes stay numpy-only.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType

import numpy as np
from PIL import Image


def resample_box(
    own: np.ndarray, box: tuple[int, int, int, int], scale: float, origin: tuple[int, int]
) -> np.ndarray:
    """Model-space `box` resampled (antialiased bilinear) from level pixels `own`, whose
    top-left is level pixel `origin`: PIL's bytes, through torch's kernel where that gives
    them (a whole power-of-two `scale`, every tap of the box inside `own`; see the module)."""
    fast = _fast_resample(own, box, scale, origin)
    return fast if fast is not None else pil_resample(own, box, scale, origin)


def pil_resample(
    own: np.ndarray, box: tuple[int, int, int, int], scale: float, origin: tuple[int, int]
) -> np.ndarray:
    """`resample_box` through PIL, the reference that defines its bytes."""
    x0, y0, x1, y1 = box
    ox, oy = origin
    image = Image.fromarray(np.ascontiguousarray(own))
    # Two explicit passes, rows then columns: given both at once, PIL runs the columns first
    # for a tall image, and the rounding between passes would then depend on the box's shape.
    rows = image.resize(
        (x1 - x0, image.height),
        resample=Image.Resampling.BILINEAR,
        box=(x0 * scale - ox, 0, x1 * scale - ox, image.height),
    )
    resized = rows.resize(
        (x1 - x0, y1 - y0),
        resample=Image.Resampling.BILINEAR,
        box=(0, y0 * scale - oy, x1 - x0, y1 * scale - oy),
    )
    return np.asarray(resized, dtype=np.uint8)


def _fast_resample(
    src: np.ndarray, box: tuple[int, int, int, int], scale: float, origin: tuple[int, int]
) -> np.ndarray | None:
    """The box through torch, or None where it would not be PIL's bytes or torch is absent."""
    if not float(scale).is_integer() or src.dtype != np.uint8 or src.ndim != 3:
        return None
    k = int(scale)
    if k < 2 or k & (k - 1) or src.shape[2] != 3:
        return None
    torch = _loaded_torch()
    if torch is None:
        return None
    rows = _aligned_span(box[1], box[3], k, origin[1], src.shape[0])
    cols = _aligned_span(box[0], box[2], k, origin[0], src.shape[1])
    if rows is None or cols is None or not _torch_matches_pil(k):
        return None
    return _torch_reduce(torch, src, rows, cols, k)


# (start, stop) of the level pixels handed to torch, and (first, count) of the outputs kept.
Span = tuple[tuple[int, int], tuple[int, int]]


def _aligned_span(b0: int, b1: int, k: int, origin: int, length: int) -> Span | None:
    """Level pixels [start, stop) of `src` along one axis whose k-blocks line up with model
    pixels, and which of torch's outputs are the box's. torch centres output j at
    (j + 0.5) k from the start and clips its taps there; an output whose taps all lie
    inside, (j - 0.5) k >= 0 and (j + 1.5) k <= stop - start, gets PIL's taps and weights."""
    first_level = b0 * k - origin  # level pixel where the box's first model pixel starts
    start = first_level % k
    stop = start + (length - start) // k * k
    first = (first_level - start) // k
    count = b1 - b0
    if first < 1 or first + count + 1 > (stop - start) // k:
        return None
    return (start, stop), (first, count)


def _torch_reduce(torch: ModuleType, src: np.ndarray, rows: Span, cols: Span, k: int) -> np.ndarray:
    (r0, r1), (ry, h) = rows
    (c0, c1), (cx, w) = cols
    # Whole rows keep the array contiguous; a column cut is copied once here, in numpy, so
    # torch does not copy it again (with its thread pool).
    part = np.ascontiguousarray(src[r0:r1, c0:c1])
    if not part.flags.writeable:  # torch warns on read-only arrays; it only reads this one
        part = part.copy()
    image = torch.from_numpy(part).permute(2, 0, 1).unsqueeze(0)  # channels-last view
    with torch.inference_mode():
        reduced = torch.nn.functional.interpolate(
            image,
            size=((r1 - r0) // k, (c1 - c0) // k),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    out: np.ndarray = reduced[0].permute(1, 2, 0).numpy()
    return out[ry : ry + h, cx : cx + w]


def _loaded_torch() -> ModuleType | None:
    """torch, if this process has finished importing it; never imports it."""
    torch = sys.modules.get("torch")
    spec = getattr(torch, "__spec__", None)
    if torch is None or getattr(spec, "_initializing", False):
        return None  # absent, or another thread is still importing it
    return torch


@functools.cache
def _torch_matches_pil(k: int) -> bool:
    """torch's kernel gives PIL's bytes at scale k on this machine (random pixels, a tall
    and a wide box, so ties and both pass orders are exercised). Memoised: a fixed fact of
    the process's torch build and CPU."""
    torch = _loaded_torch()
    if torch is None:
        return False
    rng = np.random.default_rng(k)
    for shape in ((12 * k, 5 * k), (5 * k, 12 * k)):
        src = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        box = (2, 2, shape[1] // k - 2, shape[0] // k - 2)
        rows = _aligned_span(box[1], box[3], k, 0, shape[0])
        cols = _aligned_span(box[0], box[2], k, 0, shape[1])
        if rows is None or cols is None:
            return False
        try:
            fast = _torch_reduce(torch, src, rows, cols, k)
        except Exception:  # an old or odd build without the antialiased kernel
            return False
        if not np.array_equal(fast, pil_resample(src, box, float(k), (0, 0))):
            return False
    return True
