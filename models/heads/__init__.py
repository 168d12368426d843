"""Classifier heads behind one interface (`ClassifierHead`), chosen by name."""

from __future__ import annotations

from typing import Any

from wsi_segment.errors import ConfigError

from .base import DEFAULT_DROPOUT, ClassifierHead
from .cam import CAMHead
from .lficam import LFICAMHead
from .lficam_ref import LFICAMRefHead
from .pcam import PCAMHead
from .pda import PDA_SCHEDULES, PDAHead, PDASchedule, pda_attention

# in the order of `models.head_names.HEAD_NAMES` (the command line's choices)
HEADS: dict[str, type[ClassifierHead]] = {
    "pda": PDAHead,
    "cam": CAMHead,
    "pcam": PCAMHead,
    "lficam": LFICAMHead,
    "lficam-ref": LFICAMRefHead,
}


def build_head(kind: str, in_channels: int, num_classes: int, **kwargs: Any) -> ClassifierHead:
    """Build a head by name (cam, pda, pcam, lficam, lficam-ref); kwargs as returned by `head.config()`."""
    if kind not in HEADS:
        raise ConfigError(f"unknown classifier head {kind!r}; choose one of {sorted(HEADS)}")
    if kind == "pda" and isinstance(kwargs.get("schedule"), dict):
        kwargs = {**kwargs, "schedule": PDASchedule(**kwargs["schedule"])}
    try:
        return HEADS[kind](in_channels, num_classes, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad options for the {kind!r} head: {exc}") from exc


__all__ = [
    "DEFAULT_DROPOUT",
    "HEADS",
    "PDA_SCHEDULES",
    "CAMHead",
    "ClassifierHead",
    "LFICAMHead",
    "LFICAMRefHead",
    "PCAMHead",
    "PDAHead",
    "PDASchedule",
    "build_head",
    "pda_attention",
]
