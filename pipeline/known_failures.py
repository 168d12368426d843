"""Known failures: a slide that failed and has not changed since is not retried every night.

A batch writes down each slide that failed with an error that would recur (a damaged or
unreadable slide, a region off the slide: `RECURRING`) in a failure record beside the
outputs (`pipeline.outputs.failure_record`). The record carries the fingerprint the
up-to-date check uses (`pipeline.outputs.run_identity.run_fingerprint`: the slide's path,
size and mtime, the model files' hash, the output-changing parameters and the --roi
file's bytes), so the next batch settles "still failing" with a stat and a small read per
slide, before any task starts, and reports it as a known failure instead of retrying it.
Touching or replacing the slide, another model or other parameters change the fingerprint,
and the slide runs again; so does every slide when the user asks (`retry_failed`).

Errors that say nothing about the slide (a full disk, another run holding the lock, a
broken model, an internal error) are never recorded: they are retried on every run, and
fail it, until fixed. A slide that finishes, or is found up to date, has its record removed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from wsi_segment import errors
from wsi_segment.errors import RoiError, SlideError, WsiSegmentError
from wsi_segment.pipeline.batch_inputs import BatchItem, params_for
from wsi_segment.pipeline.outputs.failure_record import clear_record, read_record, write_record
from wsi_segment.pipeline.outputs.run_identity import run_fingerprint, slide_identity
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import SlideResult
from wsi_segment.pipeline.up_to_date import ModelFiles
from wsi_segment.wsi.shown_path import is_remote_url

KNOWN = "known-failure"  # the status of a slide not retried because it failed before
RECURRING: tuple[type[WsiSegmentError], ...] = (SlideError, RoiError)
# may not recur: a decoder killed for memory looks like a damaged file
NOT_RECURRING: tuple[type[WsiSegmentError], ...] = (errors.DecoderDied,)


def recurs(error_class: str | None) -> bool:
    """Whether an error of this class (a name in `wsi_segment.errors`) would fail the same
    slide, model and parameters again: only those are recorded."""
    cls = getattr(errors, error_class or "", None)
    return (
        isinstance(cls, type) and issubclass(cls, RECURRING) and not issubclass(cls, NOT_RECURRING)
    )


def error_class_of(exc: BaseException) -> str:
    """The name a failed slide's result carries for `recurs` and the record."""
    return type(exc).__name__


def failure_fingerprint(slide_path: str, params: SegmentParams, model: ModelFiles) -> str | None:
    """The fingerprint a failure of this slide run is recorded under; None when it cannot
    be taken or is not kept (a remote slide: its failures are often the network's; a file
    gone; an unreadable --roi), and the failure is then not recorded."""
    try:
        if is_remote_url(slide_path):  # asked of the name: no request to the store
            return None
        model_hash, meta = model
        return run_fingerprint(slide_path, model_hash, params, meta)
    except (WsiSegmentError, OSError):
        return None


def known_failures(
    items: Sequence[BatchItem],
    out_root: str,
    params: SegmentParams,
    model: ModelFiles | None,
    skip: Collection[int] = (),
) -> dict[int, SlideResult]:
    """The known-failure results of the items whose failure record matches this run, by
    index (`skip`: items already settled, e.g. up to date). Nothing is opened but the
    records; no record, another fingerprint or no model identity: the item runs."""
    known: dict[int, SlideResult] = {}
    if model is None:
        return known
    for i, item in enumerate(items):
        if i in skip:
            continue
        t0 = time.perf_counter()
        record = read_record(out_root, item.name)
        if record is None:
            continue
        try:
            item_params = params_for(item, params)
        except WsiSegmentError:
            continue
        if failure_fingerprint(item.slide, item_params, model) != record["fingerprint"]:
            continue
        known[i] = SlideResult(
            item.slide,
            KNOWN,
            None,
            {},
            record["message"],
            time.perf_counter() - t0,
            error_class=record["error_class"],
            known_since=record["since_utc"],
        )
    return known


def utc_now() -> str:
    """The time a record is stamped with, to the second, in UTC."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def failure_record(
    item: BatchItem,
    params: SegmentParams,
    model: ModelFiles,
    fingerprint: str,
    result: SlideResult,
    since: str,
    now: str,
) -> dict[str, Any]:
    """What a record says: the slide, model and parameters that failed, how, when, and the
    run that saw it (summary.json's `run`, from `params.origin`)."""
    origin = params.origin
    return {
        "slide": slide_identity(item.slide),
        "output_name": item.name,
        "model": {"identity": model[0], "name": model[1].name},
        "params": params.fingerprint_fields(),
        "roi": str(params.roi) if params.roi is not None else None,
        "fingerprint": fingerprint,
        "error_class": result.error_class or "",
        "message": result.error or "",
        "since_utc": since,
        "failed_utc": now,
        "run": dict(origin.details) if origin is not None else {},
        "command": list(origin.command) if origin is not None else [],
    }


def record_failure(
    item: BatchItem,
    result: SlideResult,
    out_root: str,
    params: SegmentParams,
    model: ModelFiles,
    now: str,
) -> tuple[SlideResult, str | None]:
    """Write (or rewrite) the record of a slide that failed with a recurring error: `since`
    stays the record's when the same run failed again (retried on request). Returns the
    result (with `known_since` when it failed again) and why no record was written, if so."""
    try:
        item_params = params_for(item, params)
    except WsiSegmentError:
        return result, None
    fingerprint = failure_fingerprint(item.slide, item_params, model)
    if fingerprint is None:
        return result, None
    previous = read_record(out_root, item.name)
    since = now
    if previous is not None and previous["fingerprint"] == fingerprint:
        since = previous["since_utc"]
        result = dataclasses.replace(result, known_since=since)
    record = failure_record(item, item_params, model, fingerprint, result, since, now)
    return result, write_record(out_root, item.name, record)


def settle_records(
    items: Sequence[BatchItem],
    results: Sequence[SlideResult],
    out_root: str,
    params: SegmentParams,
    model: ModelFiles | None,
) -> tuple[list[SlideResult], list[str]]:
    """After a batch: record each slide that failed with a recurring error, remove the
    record of each that finished or was up to date. Returns the results (`record_failure`)
    and what could not be recorded (a file of someone else's in the way, an unwritable
    folder)."""
    settled: list[SlideResult] = []
    problems: list[str] = []
    now = utc_now()
    for item, result in zip(items, results, strict=True):
        if result.status in ("done", "up-to-date"):
            clear_record(out_root, item.name)
        elif result.status == "failed" and model is not None and recurs(result.error_class):
            result, problem = record_failure(item, result, out_root, params, model, now)
            if problem is not None:
                problems.append(problem)
        settled.append(result)
    return settled, problems
