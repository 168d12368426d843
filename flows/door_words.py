"""Advice worded for where a run was started: CLI options on a terminal, flow parameters in
a deployment.

Errors and warnings are written once, in the pipeline, in the words of the CLI ("pass it
with --mpp", "pass --tissue all", "choose another --out"). A lab running the nightly
deployment has no command line to add an option to: it edits the deployment's parameters
or the manifest. So in a flow run of a deployment each CLI option a message names is
rewritten to the flow parameter it maps to: a parameter of the flow (`out`, `model_dir`,
`slide_timeout`, ...) by its name, any other segmentation option as a key of the flow's
`options` parameter (`options.tissue=all`), and a batch's `--mpp` as the manifest's `mpp`
column (or `options.mpp` for every slide). The map comes from the CLI's own parser, so a new
option is covered the day it is added. A run started from the CLI or a script keeps the
CLI's words, and so does training (its options are `wsi-segment train`'s).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import re
from collections.abc import Callable, Collection
from typing import Any

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect.context import FlowRunContext  # noqa: E402

# `--name`, then maybe a separator and a value (kept only where it is one: see `_is_value`)
_OPTION = re.compile(r"--([a-z][a-z0-9-]*)(?:([ =])([^\s,;:()]+))?")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?")
_PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*(\.[A-Za-z.]+)?")  # N, SECONDS, FILE.geojson
# CLI destinations whose flow parameter or `options` key has another name
_RENAMED = {"model": "model_dir", "no_gate": "gate"}
_NEGATED = {"no_gate"}  # a flag that turns a parameter off
# The flows whose parameters are `wsi-segment batch`'s options (training has its own).
SEGMENT_FLOWS = ("segment-batch", "segment-slide")


class _RecordingParser(argparse.ArgumentParser):
    """A parser that keeps each argument's action as it is added (`recorded`): argparse
    hands an action back from `add_argument` and nowhere else in its public API."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.recorded: list[argparse.Action] = []  # first: the parser adds its -h here
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.recorded.append(action)
        return action


@functools.cache
def cli_actions() -> dict[str, argparse.Action]:
    """`--option` -> its argparse action, for every option of `wsi-segment batch` (which
    has every segmentation option too)."""
    from wsi_segment.flows import cli_batch

    subparsers = argparse.ArgumentParser().add_subparsers(parser_class=_RecordingParser)
    cli_batch.add_parser(subparsers)  # type: ignore[arg-type]  # a parser class of its own
    batch = subparsers.choices["batch"]
    assert isinstance(batch, _RecordingParser)
    return {option: action for action in batch.recorded for option in action.option_strings}


def _is_value(action: argparse.Action, text: str) -> bool:
    """Whether `text` after the option is its value in the message (`--tissue all`,
    `--mpp 0.25`, `--roi FILE.geojson`) rather than the next word (`--model with ...`)."""
    if action.nargs == 0:
        return False
    if action.choices is not None:
        return text in action.choices
    return bool(_NUMBER.fullmatch(text) or _PLACEHOLDER.fullmatch(text))


def flow_words(message: str, flow_parameters: Collection[str]) -> str:
    """`message` with each CLI option named as the flow with `flow_parameters` takes it."""
    actions = cli_actions()

    def word(match: re.Match[str]) -> str:
        action = actions.get(f"--{match.group(1)}")
        if action is None:
            return match.group(0)
        dest = action.dest
        name = _RENAMED.get(dest, dest)
        name = name if name in flow_parameters else f"options.{name}"
        separator, text = match.group(2) or "", match.group(3) or ""
        rest = separator + text
        if action.nargs == 0:  # a flag: what it sets
            value = "false" if dest in _NEGATED else "true"
            return f"`{name}={value}`{rest}"
        if text and _is_value(action, text):
            return f"`{name}={text}`"
        if name == "options.mpp" and "input" in flow_parameters:
            return f"the manifest's `mpp` column (or `{name}` for every slide){rest}"
        return f"`{name}`{rest}"

    return _OPTION.sub(word, message)


def run_words(message: str) -> str:
    """`message` in the words of the current run (`words_of_this_run`)."""
    return words_of_this_run()(message)


def words_of_this_run() -> Callable[[str], str]:
    """How the current run words advice: a deployment's flow run names its flow's
    parameters (`flow_words`); anything else (the CLI, a script, no flow) keeps the CLI's
    words. Decided here, once, so a thread without the flow's context words it the same."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None or ctx.flow_run.deployment_id is None:
        return str
    if ctx.flow is None or ctx.flow.name not in SEGMENT_FLOWS:
        return str
    parameters = tuple(inspect.signature(ctx.flow.fn).parameters)
    return functools.partial(_flow_words_of, parameters=parameters)


def _flow_words_of(message: str, parameters: tuple[str, ...]) -> str:
    return flow_words(message, parameters)
