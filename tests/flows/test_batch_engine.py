"""A batch whose chunks run in the batch's process: slides in flight on the engine
write what they write one at a time, share the machine's decoders, and leave no decoder
process or shared memory behind. The batch loop (`flows.batch_loop`) is the same behind
both doors; this runs it through the terminal's (`flows.terminal_batch`), which needs no
Prefect server (the flow's own door: tests/flows/test_batch_flow.py)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

from tests.conftest import CMU_SLIDE, DATA_DIR
from tests.engine_leaks import shm_entries
from tests.flows.conftest import output_files, stable_summary

OS1_SLIDE = DATA_DIR / "OS-1-detail.ome.tif"


def test_two_slides_in_flight_on_the_engine_write_what_one_at_a_time_writes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from wsi_segment.flows.batch_loop import BatchRequest
    from wsi_segment.flows.terminal_batch import run_terminal_batch
    from wsi_segment.pipeline.params import SegmentParams

    folder = tmp_path / "in"
    folder.mkdir()
    for slide in (CMU_SLIDE, OS1_SLIDE):
        shutil.copy2(slide, folder / slide.name)
    # decoders=1: the engine on the CPU (its default there is the reader thread); fp32: the
    # bytes of two runs are compared; small chunks and batches: batches span chunks; torch:
    # the runtime choice has its own tests (models/runtimes, reliability/test_same_bytes)
    options = {"precision": "fp32", "decoders": 1, "chunk_tiles": 2, "batch_size": 8}
    options["runtime"] = "torch"
    # the slides taken at 0.25 um/px (CMU's is 0.499): 64 and 25 tiles, not 208 and 16
    options["mpp"] = 0.25
    before = shm_entries()
    runs = {}
    for concurrency in (2, 1):
        out = tmp_path / f"out-{concurrency}"
        params = SegmentParams.from_dict({**options, "model_dir": tiny_model_dir})
        request = BatchRequest(str(folder), str(out), params, workers=0, concurrency=concurrency)
        results = run_terminal_batch(request, quiet=True)
        assert sorted((Path(r.slide).name, r.status) for r in results) == [
            ("CMU-1-Small-Region.svs", "done"),
            ("OS-1-detail.ome.tif", "done"),
        ]
        runs[concurrency] = out
        assert multiprocessing.active_children() == []  # every decoder joined
        assert shm_entries() <= before  # every slot ring removed

    for name in ("CMU-1-Small-Region", "OS-1-detail"):
        together, alone = runs[2] / name, runs[1] / name
        files = output_files(together)
        assert any(path.startswith("probabilities.ome.zarr/0/") for path in files)
        assert files == output_files(alone)  # the zarr chunks' bytes included
        assert stable_summary(together) == stable_summary(alone)
        assert stable_summary(together)["parameters"]["decoders"] == 1
        # each slide's run policy knew the slides in flight (sharing applies on a GPU)
        policy = json.loads((together / "summary.json").read_text())["run_policy"]
        assert policy["decoders"] == {"value": 1, "reason": "asked for (--decoders 1)"}


def test_one_gpu_runs_the_batch_s_chunks_in_process() -> None:
    import pytest
    import torch

    from wsi_segment.pipeline.machine import probe_machine
    from wsi_segment.pipeline.params import SegmentParams
    from wsi_segment.pipeline.run_policy import engine_in_process

    if not torch.cuda.is_available() or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        pytest.skip("needs a GPU")
    one_gpu = torch.cuda.device_count() == 1
    machine = probe_machine()
    for device in ("auto", "cuda"):  # several GPUs: one worker each
        assert engine_in_process(machine, SegmentParams(device=device), None, None).value == one_gpu
