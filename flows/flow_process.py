"""What every flow does first in its process, before it reads anything: outlive the pipes a
deployment's worker may close under it (`flows.worker_pipes`), raise the open-file limit or
refuse one no run lives under (`wsi_segment.open_files`), and refuse an address-space limit
a run could not finish under (`wsi_segment.address_space`)."""

from __future__ import annotations

from wsi_segment.address_space import require_address_space
from wsi_segment.flows.worker_pipes import outlive_worker_pipes
from wsi_segment.open_files import require_open_files


def prepare_flow_process() -> None:
    """The checks and settings of a flow's process, for this process and its children."""
    outlive_worker_pipes()
    require_open_files()
    require_address_space()
