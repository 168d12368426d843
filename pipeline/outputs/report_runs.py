"""Which model and parameters made the results of an output folder, and when: the line
under the report page's title, so a reader knows what the numbers are before reading them.

Read from the slides' own summaries (never from a clock or from the command that rewrites
the page), so a batch's page and `wsi-segment report`'s say the same. A folder whose slides
were made by several models or parameter sets gets a line for each, with its count.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsi_segment.pipeline.outputs.slide_entry import SlideEntry

# summary.json's parameters that change the outputs, in the page's words and order
SHOWN_PARAMETERS = (
    "mpp",
    "precision",
    "runtime",
    "gate",
    "tissue",
    "read_level",
    "output_downsample",
    "overlap",
    "simplify_tolerance",
)
SHA_SHOWN = 12  # hex digits of a model's sha256 on the page: enough to tell two apart


def run_settings(parameters: Any) -> str:
    """summary.json's output-changing parameters as one line ("mpp from the model, precision fp32,
    ..."); empty where the summary has none."""
    if not isinstance(parameters, dict):
        return ""
    shown = []
    for key in SHOWN_PARAMETERS:
        value = parameters.get(key)
        if key == "mpp" and value is None:
            value = "from the model"
        if value is not None:
            shown.append(f"{key.replace('_', ' ')} {value}")
    return ", ".join(shown)


def runs_line(entries: Sequence[SlideEntry]) -> str:
    """One line per (model, its sha256, parameters) among the finished slides: how many,
    the model, the dates their results were made (UTC) and the parameters."""
    runs: dict[tuple[str, str, str], list[str]] = {}
    for entry in entries:
        if entry.model:
            key = (entry.model, entry.model_sha256[:SHA_SHOWN], entry.settings)
            runs.setdefault(key, []).append(entry.created_utc)
    lines = []
    for (model, sha, settings), dates in sorted(runs.items(), key=lambda r: -len(r[1])):
        made = sorted(d[:16].replace("T", " ") for d in dates if d)
        until = f" to {made[-1]}" if made and made[-1] != made[0] else ""
        when = f", made {made[0]}{until} UTC" if made else ""
        lines.append(
            f"<li>{len(dates)} slide{'s' if len(dates) != 1 else ''}: model "
            f"<b>{escape(model)}</b> (sha256 {escape(sha)}){escape(when)}"
            + (f"; {escape(settings)}" if settings else "")
            + "</li>"
        )
    return f'<ul class="runs">{"".join(lines)}</ul>' if lines else ""
