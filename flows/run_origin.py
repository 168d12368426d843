"""Which flow run made a slide's outputs, and how to repeat it (summary.json `command`, `run`).

In a deployed run `sys.argv` is Prefect's engine, which repeats nothing: the command is then
`prefect deployment run <flow>/<deployment> --params <JSON>` with the run's parameters. A flow
called in-process (`wsi-segment batch`, a script) keeps its own command line
(`pipeline.outputs.summary.process_command`). Either way a URL among them is recorded as
shown (`wsi.shown_path`: a presigned URL's signature is not written down).
"""

from __future__ import annotations

import json
from typing import Any

from wsi_segment.flows import prefect_env

prefect_env.apply()

from prefect.context import FlowRunContext  # noqa: E402
from prefect.runtime import deployment  # noqa: E402

from wsi_segment.pipeline.outputs.summary import jsonable, process_command  # noqa: E402
from wsi_segment.pipeline.params import RunOrigin  # noqa: E402
from wsi_segment.wsi.shown_path import shown_text  # noqa: E402


def flow_run_origin() -> RunOrigin | None:
    """The current flow run's origin; None outside a flow run."""
    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return None
    flow_name = ctx.flow.name if ctx.flow is not None else ctx.flow_run.name
    parameters: dict[str, Any] = shown_values(jsonable(dict(ctx.parameters or {})))
    name = f"{flow_name}/{deployment.name}" if ctx.flow_run.deployment_id else None
    command: tuple[str, ...]
    if name is not None:
        command = (
            "prefect", "deployment", "run", name,
            "--params", json.dumps(parameters, sort_keys=True),
        )  # fmt: skip
    else:
        command = tuple(process_command())
    details = {
        "flow": flow_name,
        "flow_run_id": str(ctx.flow_run.id),
        "flow_run_name": ctx.flow_run.name,
        "deployment": name,
        "parameters": parameters,
    }
    return RunOrigin(command, details)


def shown_values(value: Any) -> Any:
    """A flow's JSON parameters with every URL in their text as shown (`shown_text`)."""
    if isinstance(value, dict):
        return {key: shown_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shown_values(item) for item in value]
    return shown_text(value) if isinstance(value, str) else value
