"""overlay-thumbnail.jpg: written by a real run beside overlay.png, at the size rule's exact
size, listed in summary.json, owned like the other outputs, the same bytes on every run."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import CMU_SLIDE
from wsi_segment.errors import OutputError
from wsi_segment.pipeline.outputs.overlay_thumbnail import (
    THUMBNAIL_PX,
    save_thumbnail,
    thumbnail_factor,
    thumbnail_size,
)
from wsi_segment.pipeline.params import SegmentParams
from wsi_segment.pipeline.segment import segment_slide

THUMBNAIL = "overlay-thumbnail.jpg"


def test_the_size_rule() -> None:
    """The least whole factor that brings the longer side to 320 px at most; each side
    divided by it, rounded up."""
    assert THUMBNAIL_PX == 320
    assert [thumbnail_factor(s) for s in [(320, 10), (321, 10), (851, 989), (10, 1281)]] == [
        1,
        2,
        4,
        5,
    ]
    assert thumbnail_size((851, 989)) == (213, 248)  # 212.75, 247.25 rounded up
    assert thumbnail_size((1281, 7)) == (257, 2)
    assert thumbnail_size((100, 50)) == (100, 50)  # small pictures are kept as they are


def test_the_thumbnail_is_a_box_reduction_of_the_overlay() -> None:
    """Each thumbnail pixel is the mean of its factor x factor box (a JPEG of it: within the
    encoder's error), the partial last box included."""
    overlay = np.zeros((9, 700, 3), np.uint8)  # factor 3: boxes of 3 x 3, 234 x 3 of them
    overlay[:, :350] = (200, 40, 40)
    overlay[:, 350:] = (40, 40, 200)
    buffer = io.BytesIO()
    save_thumbnail(Image.fromarray(overlay), buffer)
    thumb = Image.open(buffer)
    assert thumb.format == "JPEG" and thumb.size == (234, 3)
    pixels = np.asarray(thumb).astype(int)
    assert np.abs(pixels[:, 10] - (200, 40, 40)).max() <= 3
    assert np.abs(pixels[:, 200] - (40, 40, 200)).max() <= 3


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> list[Path]:
    """The CMU slide run twice by the tiny model, into two OUT folders."""
    tmp = tmp_path_factory.mktemp("thumbnail")
    params = SegmentParams(tiny_model_dir, precision="fp32", runtime="torch", device="cpu")
    return [segment_slide(CMU_SLIDE, tmp / f"out{i}", params).out_dir for i in (0, 1)]


def test_a_run_writes_the_thumbnail_of_its_overlay(two_runs: list[Path]) -> None:
    folder = two_runs[0]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["output"]["files"] == [
        "probabilities.ome.zarr",
        "tissue.geojson",
        "overlay.png",
        THUMBNAIL,
        "summary.json",
    ]
    with Image.open(folder / "overlay.png") as overlay, Image.open(folder / THUMBNAIL) as thumb:
        assert thumb.format == "JPEG" and thumb.mode == "RGB"
        assert max(overlay.size) > THUMBNAIL_PX  # the CMU overlay is shrunk
        assert thumb.size == thumbnail_size(overlay.size)
        assert max(thumb.size) <= THUMBNAIL_PX
        remade = io.BytesIO()
        save_thumbnail(overlay, remade)  # what the report makes for a folder without one
    assert (folder / THUMBNAIL).read_bytes() == remade.getvalue()


def test_the_same_run_writes_the_same_bytes(two_runs: list[Path]) -> None:
    first, second = ((f / THUMBNAIL).read_bytes() for f in two_runs)
    assert first == second and len(first) < 40_000


def test_the_thumbnail_is_owned_like_the_other_outputs(
    two_runs: list[Path], tiny_model_dir: Path
) -> None:
    """Ours where the summary lists it (an --overwrite may replace the folder); a file of
    that name in a folder whose summary does not list it is someone else's."""
    from wsi_segment.pipeline.outputs.ownership import not_our_output

    folder = two_runs[1]
    assert not_our_output(folder) is None
    summary_path = folder / "summary.json"
    original = summary_path.read_text()
    summary = json.loads(original)
    summary["output"]["files"].remove(THUMBNAIL)  # as an older version listed its files
    summary_path.write_text(json.dumps(summary))
    try:
        assert f"did not write ({THUMBNAIL})" in str(not_our_output(folder))
        params = SegmentParams(
            tiny_model_dir, precision="fp32", runtime="torch", device="cpu", overwrite=True
        )
        with pytest.raises(OutputError, match=THUMBNAIL):
            segment_slide(CMU_SLIDE, folder.parent, params)
        assert (folder / THUMBNAIL).is_file()
    finally:
        summary_path.write_text(original)
