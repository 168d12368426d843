"""Synthetic whole-slide images with exact ground truth (writer in progress)."""

from __future__ import annotations

from wsi.textures import CLASS_COLORS, CLASS_NAMES, render_tissue

__all__ = ["CLASS_COLORS", "CLASS_NAMES", "render_tissue"]
