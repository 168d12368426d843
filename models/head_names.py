"""The classifier heads' names, torch-free, for command lines that list them without
loading a network (`models.heads.HEADS` maps the same names to their classes)."""

from __future__ import annotations

HEAD_NAMES = ("pda", "cam", "pcam", "lficam", "lficam-ref")  # the first is the default
