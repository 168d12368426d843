"""Is a slide's finished output already this run? Decided before anything is loaded.

A rerun over finished slides (a nightly batch over a folder) must cost a stat and a few
hashes per slide, not a model load, tissue detection and decoder start-up each. The run's
fingerprint (`pipeline.outputs.run_identity.run_fingerprint`) needs only the slide's identity
(path, size, mtime), the model's identity (the hash of its files, computed as loading them
would: `models.meta.model_files_identity`, no torch), the parameters and the --roi file's
bytes; all are known before `prepare` opens anything.

Decided here: "up to date", and "another run's output, refused without --overwrite", so a
rerun with other settings is told at once, not after its model loads. Anything the check
cannot settle (a model or slide that cannot be read) is left to `prepare`, which names it;
`is_up_to_date` decides again once prepared, for a run that finished the slide meanwhile.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_segment.errors import OutputError, WsiSegmentError
from wsi_segment.models.meta import ModelMeta, model_files_identity
from wsi_segment.pipeline.outputs.output_dir import read_previous_summary
from wsi_segment.pipeline.outputs.output_name import slide_output_name
from wsi_segment.pipeline.outputs.ownership import refuse_foreign, refuse_link
from wsi_segment.pipeline.outputs.run_identity import run_fingerprint
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.prepare import resolve_model_dir
from wsi_segment.wsi.shown_path import is_remote_url, shown_slide_path
from wsi_segment.wsi.slide_path import absolute_slide_path

if TYPE_CHECKING:
    from wsi_segment.pipeline.prepare import PreparedSlide

ModelFiles = tuple[str, ModelMeta]  # (identity, meta): `models.meta.model_files_identity`


def model_files(params: SegmentParams) -> ModelFiles | None:
    """The identity and meta of the run's model files, hashed once for many slides (a
    batch's check); None when they cannot be read (each slide's `prepare` then says why)."""
    try:
        return model_files_identity(resolve_model_dir(params))
    except (WsiSegmentError, OSError):
        return None


def finished_output(
    slide_path: str, out_root: str | Path, params: SegmentParams, model: ModelFiles | None = None
) -> tuple[Path, dict[str, Any]] | None:
    """(output folder, its summary) when the folder holds a finished run with this run's
    fingerprint and --overwrite is not given; None when `prepare` must decide. `model`: the
    model files' identity if already hashed (`model_files`), else they are hashed here.

    A bad output name, a link at the output folder, or (without --overwrite) another run's
    finished output there raises the error `prepare` would."""
    name = slide_output_name(slide_path, params.output_name)
    out_dir = Path(out_root) / name
    refuse_link(out_dir)  # as prepare does first: outputs are never read through a link
    if params.overwrite:
        return None
    previous = read_previous_summary(out_dir)
    if previous is None or not previous.get("fingerprint"):
        return None
    try:
        model_hash, meta = model or model_files_identity(resolve_model_dir(params))
        fingerprint = run_fingerprint(slide_path, model_hash, params, meta)
    except (WsiSegmentError, OSError):  # a missing slide, model or ROI: prepare names it
        return None
    if previous["fingerprint"] != fingerprint:
        refuse_other_run(out_dir, slide_path, previous, (model_hash, params))
    return out_dir, previous


def is_up_to_date(prep: PreparedSlide) -> bool:
    """True when the final folder holds a complete run with the same fingerprint. A folder
    that is not ours is named as such rather than offered to --overwrite (which would
    refuse it too)."""
    previous = read_previous_summary(prep.out_dir)
    if previous is None:
        return False
    if previous.get("fingerprint") == prep.fingerprint:
        return not prep.params.overwrite
    if not prep.params.overwrite:
        refuse_other_run(prep.out_dir, prep.slide_path, previous, (prep.model_hash, prep.params))
    refuse_foreign(prep.out_dir)  # --overwrite replaces only an output of ours
    return False


def refuse_other_run(
    out_dir: Path, slide_path: str, previous: dict[str, Any], run: tuple[str, SegmentParams]
) -> None:
    """The OutputError for `out_dir`, a finished output of ours from another run met
    without --overwrite (`previous`: its summary; `run`: this run's model hash and
    parameters): of another slide of the same name (two folders' `x.svs` into one --out:
    --overwrite would lose the other slide's results), or of this slide, saying what differs:
    the model, the parameters (each named), or else the slide file itself."""
    refuse_foreign(out_dir)
    slide = previous.get("slide")
    other = slide.get("path") if isinstance(slide, dict) else None
    if isinstance(other, str) and not _same_slide(other, slide_path):
        raise OutputError(
            f"{out_dir} holds the results of another slide of that name, "
            f"{shown_slide_path(other)}; choose "
            "another --out for this one, or list it in a `wsi-segment batch` manifest with "
            "another output name in the 'name' column (--overwrite would replace the other "
            "slide's results)"
        )
    raise OutputError(
        f"{out_dir} holds results of a different run ({_what_differs(previous, *run)}); "
        "pass --overwrite to replace them or choose another --out"
    )


def _what_differs(previous: dict[str, Any], model_hash: str, params: SegmentParams) -> str:
    """Why the fingerprints differ, from what the summary recorded: another model, other
    parameters (named, old -> new), or neither: the slide file changed (a slide replaced by
    a damaged copy: a rerun with --overwrite then says what is wrong with it), the --roi
    file's regions, or the output format of an earlier version."""
    model = previous.get("model")
    if not isinstance(model, dict) or model.get("sha256") != model_hash:
        return "another model: its files' sha256 differ"
    try:
        before = SegmentParams.from_dict(previous.get("parameters") or {}).fingerprint_fields()
    except (TypeError, ValueError, WsiSegmentError):  # an older version's parameters
        return "other model or parameters"
    now = params.fingerprint_fields()
    changed = [
        f"{k} {before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(before.keys() | now.keys())
        if before.get(k) != now.get(k)
    ]
    if changed:
        return "other parameters: " + ", ".join(changed)
    roi = ", or the --roi file's contents" if params.roi is not None else ""
    return (
        f"the same model and parameters: the slide file changed since (its size or "
        f"modification time){roi}, or an earlier version of wsi-segment wrote them"
    )


def _same_slide(recorded: str, slide_path: str) -> bool:
    """Whether summary.json's slide path (`recorded`: `absolute_slide_path`'s, a URL as shown)
    is the slide at `slide_path` (as given: relative, a link, a URL). URLs compare as shown
    (`shown_slide_path`), as their identity does: a presigned URL signed anew is the same
    slide, and an older version's record, which kept the query, is shown so too. An older
    version's relative path cannot be told apart: taken as the same slide (the older
    message)."""
    here = absolute_slide_path(slide_path)
    if is_remote_url(here):
        return shown_slide_path(recorded) == shown_slide_path(here)
    if not os.path.isabs(recorded):
        return True
    return os.path.realpath(recorded) == os.path.realpath(here)
