"""How far each runtime and precision moves a model's answer from torch fp32 on real tissue.

    python benchmarks/runtime_agreement.py --models demo /path/to/trained-model
    python benchmarks/runtime_agreement.py --models demo --slides "" --no-record

Per model, against torch fp32:

1. tiles    the 18 LUAD-HistoSeg sample patches (tests/data), whole tiles as `evaluate`
            scores them: label agreement and each class's area shift.
2. slides   `wsi-segment SLIDE --runtime R --precision P` on the real test slides: label
            agreement (the label image the zarr stores, on tissue pixels) and each
            class's area (summary.json) shift.
3. verdict  the bf16 calibration precision auto runs (models/precision_calibration.py) on the
            CMU-1 tiles and the model's own validation patches, for torch bf16 and for
            OpenVINO bf16 (bf16 against the same runtime's fp32, as `open_runtime` judges it),
            whatever this CPU would choose: the numbers behind the verdict.

Nothing is timed; the block, with the command and the load, goes to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

warnings.filterwarnings("ignore", message=r"location=.*is out-of-bounds")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.measure import BenchRun, log, output_folder, run_pipeline  # noqa: E402

LUAD = ROOT / "tests" / "data" / "luad-histoseg-sample"
SLIDES = ("tests/data/CMU-1-Small-Region.svs", "tests/data/OS-1-detail.ome.tif")
VARIANTS = (("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"))
REF = ("torch", "fp32")


def luad_tiles(tile: int) -> torch.Tensor:
    """The sample's 18 patches (train, val, test), uint8 (N, 3, T, T)."""
    import numpy as np
    import torch
    from PIL import Image

    paths = sorted(LUAD.glob("train/*.png")) + sorted(LUAD.glob("*/img/*.png"))
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((tile, tile))) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def shift_text(shifts: dict[str, float], names: list[str]) -> str:
    """The largest relative area shift, named."""
    if not shifts:
        return "no class above 1 % of the pixels"
    label, value = max(shifts.items(), key=lambda kv: kv[1])
    index = int(label)
    name = names[index] if index < len(names) else f"label {label}"
    return f"largest class area shift {100 * value:.2f} % ({name})"


def slide_labels(folder: Path) -> tuple[np.ndarray, dict[str, float]]:
    """(labels on tissue pixels, {class: area um^2}) of one run's outputs."""
    import json

    import numpy as np
    import zarr

    from wsi_segment.pipeline.outputs.label_image import label_level0_path
    from wsi_segment.pipeline.outputs.ome_zarr import level0_path

    store = folder / "probabilities.ome.zarr"
    tissue = np.asarray(zarr.open_array(str(level0_path(store)), mode="r")[:]).max(axis=0) > 0
    labels = np.asarray(zarr.open_array(str(label_level0_path(store)), mode="r")[:])
    labels = labels.reshape(tissue.shape)
    summary = json.loads((folder / "summary.json").read_text())
    areas = {k: float(v["area_um2"]) for k, v in summary["classes"].items()}
    return labels[tissue], areas


def slide_rows(model_dir: Path, name: str, slides: list[Path], work: Path) -> list:
    """Agreement of each variant with torch fp32 on each slide, end to end."""
    import numpy as np

    rows = []
    for slide in slides:
        runs = {}
        for runtime, precision in (REF, *VARIANTS):
            out = work / "agreement" / name / slide.name / f"{runtime}-{precision}"
            log(f"[agreement] {name} {slide.name} {runtime} {precision} ...")
            run_pipeline(slide, model_dir, out, ["--runtime", runtime, "--precision", precision])
            runs[(runtime, precision)] = slide_labels(output_folder(out, slide))
        ref_labels, ref_areas = runs[REF]
        for v in VARIANTS:
            labels, areas = runs[v]
            agreement = float(np.mean(labels == ref_labels)) if labels.size else 1.0
            moved = {
                k: abs(areas[k] - a) / a
                for k, a in ref_areas.items()
                if a >= 0.01 * sum(ref_areas.values())
            }
            worst = max(moved.items(), key=lambda kv: kv[1], default=("-", 0.0))
            rows.append((f"{name}: {slide.name} {v[0]} {v[1]}", f"{100 * agreement:.3f} %",
                         f"labels vs torch fp32 on {labels.size} tissue px of the stored label image; "
                         f"largest class area shift {100 * worst[1]:.2f} % ({worst[0]})"))  # fmt: skip
    return rows


def model_rows(model_dir: Path, name: str) -> list:
    """Tile agreement and both calibration verdicts of one model."""
    from benchmarks.executors import opened, reduced
    from wsi_segment.models.model_files import ModelFiles
    from wsi_segment.models.precision_calibration import calibrate_bf16, compare_labels

    models = {v: opened(model_dir, "cpu", v[1], v[0]) for v in (REF, *VARIANTS)}
    ref = models[REF][0]
    names = [*ref.meta.classes, "Unclassified"]
    t = int(ref.meta.tile_size)
    x = luad_tiles(t)
    rows = []
    labels = {v: reduced(*mr, x, 0, t, 1).labels for v, mr in models.items()}
    for v in VARIANTS:
        agreement, shifts = compare_labels(labels[REF], labels[v])
        rows.append((f"{name}: LUAD tiles {v[0]} {v[1]}", f"{100 * agreement:.3f} %",
                     f"labels vs torch fp32 on {len(x)} LUAD-HistoSeg sample patches; "
                     f"{shift_text(shifts, names)}"))  # fmt: skip
    own = ModelFiles(model_dir, "cpu").validation_patches  # the folder's, as a run calibrates
    verdicts = {
        "torch": calibrate_bf16(
            lambda tiles, low: (
                reduced(
                    ref,
                    opened(ref, "cpu", "bf16" if low else "fp32", "torch")[1],
                    tiles,
                    0,
                    t,
                    1,
                ).labels
            ),
            t,
            "torch bf16",
            own,
        ),
        "openvino": calibrate_bf16(
            lambda tiles, low: (
                reduced(*models[("openvino", "bf16" if low else "fp32")], tiles, 0, t, 1).labels
            ),
            t,
            "OpenVINO bf16",
            own,
        ),
    }
    for runtime, cal in verdicts.items():
        chosen = "bf16" if cal.bf16_chosen else "fp32"
        rows.append((f"{name}: calibration {runtime} bf16", chosen,
                     f"{cal.tiles} tiles ({cal.own_patches} own validation patches): "
                     f"{100 * cal.agreement:.2f} % labels kept (needs >= 99.5 %), "
                     f"{shift_text(cal.area_shifts, names)} (needs <= 1 %)"))  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["demo"], help="model folders, or 'demo'")
    ap.add_argument("--slides", nargs="*", default=list(SLIDES), help="real slides ('' none)")
    ap.add_argument("--slides-only", action="store_true", help="no tiles, no verdicts")
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-segment-bench"))
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args(argv)

    from wsi_segment.models.bundle import demo_model_dir

    bench = BenchRun.start("runtime_agreement.py", argv)
    slides = [ROOT / s if not Path(s).is_absolute() else Path(s) for s in args.slides if s]
    rows: list = []
    notes = []
    for given in args.models:
        model_dir = demo_model_dir() if given == "demo" else Path(given)
        name = "demo" if given == "demo" else model_dir.name
        found = [] if args.slides_only else model_rows(model_dir, name)
        for row in (*found, *slide_rows(model_dir, name, slides, args.work)):
            log(f"[agreement] {row}")  # as it comes: a long run cut short keeps its figures
            rows.append(row)
        notes.append(f"{name}: {model_dir}")
    notes.append(
        "agreement: against torch fp32 of the same model; areas judged for classes with >= 1 % "
        "of the pixels; slides: " + (", ".join(s.name for s in slides) or "none")
    )
    bench.finish(rows, notes, not args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
