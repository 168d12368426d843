"""wsi-segment: weakly supervised tissue segmentation of whole-slide images.

The one import name of the project. The layers live in folders at the top of the repository
(`wsi/`, `models/`, `pipeline/`, `flows/`, as docs/architecture.md lays out) and are installed as
`wsi_segment.wsi`, `wsi_segment.models`, `wsi_segment.pipeline` and `wsi_segment.flows`
(setuptools `package-dir`), so generic names like `models` never enter a user's
site-packages and a folder called `models/` in the working directory cannot shadow ours.

The public API is importable from here; it loads lazily, so `import wsi_segment.errors`
(used by every layer) stays free of torch and zarr.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wsi_segment.lazy_exports import lazy_exports

_LAYERS = ("wsi", "models", "pipeline", "flows")


def _source_checkout_root() -> Path | None:
    """The repository root when running from a source checkout (layers beside this folder).

    Installed from a wheel the layers sit inside this package; from a checkout (editable
    install, `PYTHONPATH=.` on the GPU machine, a second worktree) they sit beside it, and
    the package path is extended to that one checkout only.
    """
    here = Path(__file__).resolve().parent
    if (here / "wsi" / "__init__.py").is_file():
        return None
    root = here.parent
    if all((root / layer / "__init__.py").is_file() for layer in _LAYERS):
        return root
    return None


_root = _source_checkout_root()
if _root is not None:
    __path__.append(str(_root))

# public name -> module that defines it
_PUBLIC: dict[str, str] = {
    "segment_slide": "wsi_segment.pipeline.segment",
    "build_morning_report": "wsi_segment.pipeline.morning_report",
    "SegmentParams": "wsi_segment.pipeline.params",
    "SlideResult": "wsi_segment.pipeline.segment",
    "open_slide": "wsi_segment.wsi.slide",
    "Slide": "wsi_segment.wsi.slide",
    "load_model": "wsi_segment.models.bundle",
    "save_model": "wsi_segment.models.bundle",
    "WsiSegmentError": "wsi_segment.errors",
    "SlideError": "wsi_segment.errors",
    "MppMissingError": "wsi_segment.errors",
    "ModelError": "wsi_segment.errors",
    "DatasetError": "wsi_segment.errors",
    "ConfigError": "wsi_segment.errors",
    "OutputError": "wsi_segment.errors",
}

__all__ = [
    "ConfigError",
    "DatasetError",
    "ModelError",
    "MppMissingError",
    "OutputError",
    "SegmentParams",
    "Slide",
    "SlideError",
    "SlideResult",
    "WsiSegmentError",
    "build_morning_report",
    "load_model",
    "open_slide",
    "save_model",
    "segment_slide",
]

if TYPE_CHECKING:
    from wsi_segment.errors import (
        ConfigError,
        DatasetError,
        ModelError,
        MppMissingError,
        OutputError,
        SlideError,
        WsiSegmentError,
    )
    from wsi_segment.models.bundle import load_model, save_model
    from wsi_segment.pipeline.morning_report import build_morning_report
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.segment import SlideResult, segment_slide
    from wsi_segment.wsi.slide import Slide, open_slide


__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC, globals())
