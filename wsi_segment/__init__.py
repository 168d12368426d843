"""Project-wide pieces that belong to no layer: the exception hierarchy (`wsi_segment.errors`).

`wsi` (slides) and `models` (networks) know nothing of each other (DESIGN.md); both raise
the same errors, so the hierarchy lives here, beside them, with no dependencies.
"""
