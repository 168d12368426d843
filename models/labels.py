"""Label values every layer agrees on, with no dependency (torch-free: the output writers
and the CLI's start-up import it without loading a network)."""

from __future__ import annotations

# The label of a pixel outside tissue, or where the gate removed every class; stored
# probabilities there are all 0.
NODATA = 255
