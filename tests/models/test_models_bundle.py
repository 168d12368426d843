"""Model folders: exact round trip, fp16 storage, and every refusal with a clear ModelError."""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path

import pytest
import torch

from wsi_segment.errors import ModelError
from wsi_segment.models.bundle import (
    ModelMeta,
    SegmentationModel,
    demo_model_dir,
    load_bundle,
    load_model,
    save_model,
)
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.heads import PDASchedule
from wsi_segment.models.meta import read_model_json
from wsi_segment.models.segmenter import build_segmenter

CLASSES = ["TE", "NEC", "LYM", "TAS"]
COLORS = [(205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0)]


def _model(num_classes: int = 4) -> SegmentationModel:
    meta = ModelMeta(
        name="tiny",
        classes=CLASSES[:num_classes],
        colors=COLORS[:num_classes],
        mpp=1.0,
        tile_size=64,
        normalisation={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        gate_epsilon=0.1,
        provenance={"data": "unit test", "epochs": 0},
    )
    clf = build_classifier("resnet10t", "pda", num_classes)
    seg = build_segmenter("tu-resnet10t", num_classes, decoder_channels=32)
    return SegmentationModel(clf, seg, meta)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[SegmentationModel, Path]:
    torch.manual_seed(1)
    model = _model()
    # Give BatchNorm non-trivial running stats so a lost buffer would show.
    model.train()
    with torch.no_grad():
        model.segmenter(torch.rand(2, 3, 64, 64))
        model.classifier(torch.rand(2, 3, 64, 64))
    model.eval()
    return model, save_model(model, tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def variants(
    saved: tuple[SegmentationModel, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Folders of models that differ from `saved`: smaller decoder, and an lficam head."""
    meta = saved[0].meta
    root = tmp_path_factory.mktemp("variants")
    other = SegmentationModel(
        build_classifier("resnet10t", "cam", 4),
        build_segmenter("tu-resnet10t", 4, decoder_channels=16),
        meta,
    )
    lfi = SegmentationModel(
        build_classifier("resnet10t", "lficam", 4),
        build_segmenter("tu-resnet10t", 4, decoder_channels=32),
        meta,
    )
    return {"other": save_model(other, root / "other"), "lfi": save_model(lfi, root / "lfi")}


def _tiles() -> torch.Tensor:
    return torch.randint(
        0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )


def test_round_trip_gives_identical_outputs(saved: tuple[SegmentationModel, Path]) -> None:
    model, folder = saved
    loaded = load_model(folder)
    assert loaded.meta == model.meta
    # Every weight and buffer comes back bit for bit: safetensors stores fp32 exactly.
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    # Outputs: compared with the original prepared as load_model prepares (CPU, fp32,
    # channels_last), so both run the same kernels. A model never moved to channels_last runs
    # other kernels, whose last bits differ on some CPUs (AMD EPYC) and thread counts.
    reference = copy.deepcopy(model).to_device("cpu")
    seg_a, cls_a = reference.predict(_tiles())
    seg_b, cls_b = loaded.predict(_tiles())
    assert seg_a.dtype == torch.float32 and seg_a.shape == (2, 4, 64, 64) and cls_a.shape == (2, 4)
    assert torch.equal(seg_a, seg_b) and torch.equal(cls_a, cls_b)
    doc = json.loads((folder / "model.json").read_text())
    assert doc["architecture"]["classifier"]["head"]["kind"] == "pda"
    assert doc["colors"][0] == [205, 51, 51] and doc["weights"]["dtype"] == "float32"


def test_identity_of_the_files_is_the_loaded_models(
    saved: tuple[SegmentationModel, Path], variants: dict[str, Path]
) -> None:
    """A rerun compares `model_files_identity` (no network built) with what a run loaded."""
    from wsi_segment.models.meta import model_files_identity

    _, folder = saved
    identity, meta = model_files_identity(folder)
    loaded = load_bundle(folder)
    assert identity == loaded.identity and meta == loaded.meta == loaded.network().meta
    assert identity != model_files_identity(variants["other"])[0]


def test_head_dropout_and_pda_schedule_round_trip(
    saved: tuple[SegmentationModel, Path], tmp_path: Path
) -> None:
    model = saved[0]
    schedule = PDASchedule.preset("official", floor=0.7, warmup_epochs=2)
    head = {"kind": "pda", "dropout": 0.3, "schedule": schedule}
    tuned = SegmentationModel(build_classifier("resnet10t", head, 4), model.segmenter, model.meta)
    folder = save_model(tuned, tmp_path / "tuned")
    doc = json.loads((folder / "model.json").read_text())
    assert doc["architecture"]["classifier"]["head"] == {
        "kind": "pda",
        "dropout": 0.3,
        "schedule": {
            "mu0": 1.0,
            "warmup_epochs": 2,
            "sigma": 0.98,
            "floor": 0.7,
            "decay_during_warmup": True,
        },
    }
    before = load_model(folder)
    loaded = before.classifier.head
    assert loaded.dropout.p == 0.3 and loaded.schedule == schedule
    assert loaded.config() == tuned.classifier.head.config()

    # a model.json written before dropout and the schedule were recorded still loads, with
    # the defaults (dropout acts in training only: the outputs are the same)
    del doc["architecture"]["classifier"]["head"]["dropout"]
    del doc["architecture"]["classifier"]["head"]["schedule"]
    (folder / "model.json").write_text(json.dumps(doc))
    old = load_model(folder)
    assert old.classifier.head.dropout.p == 0.5 and old.classifier.head.schedule == PDASchedule()
    seg_a, cls_a = before.predict(_tiles())  # loaded alike: equal by construction
    seg_b, cls_b = old.predict(_tiles())
    assert torch.equal(seg_a, seg_b) and torch.equal(cls_a, cls_b)


def test_fp16_storage_is_smaller_and_close(
    saved: tuple[SegmentationModel, Path], tmp_path: Path
) -> None:
    model, folder = saved
    small = save_model(model, tmp_path / "half", weights_dtype="float16")
    assert (small / "model.safetensors").stat().st_size < 0.6 * (
        folder / "model.safetensors"
    ).stat().st_size
    loaded = load_model(small)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    seg_a, cls_a = model.predict(_tiles(), gate=False)
    seg_b, cls_b = loaded.predict(_tiles(), gate=False)
    assert (seg_a - seg_b).abs().max() < 2e-2 and (cls_a - cls_b).abs().max() < 2e-2


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_pickle_renamed_safetensors_is_refused(
    saved: tuple[SegmentationModel, Path], tmp_path: Path
) -> None:
    _, folder = saved
    bad = _copy(folder, tmp_path / "bad")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # would create `marker` if ever unpickled
            return (Path.touch, (marker,))

    (bad / "model.safetensors").write_bytes(pickle.dumps({"state": Evil()}))
    doc = json.loads((bad / "model.json").read_text())
    doc["weights"].pop("sha256")  # get past the checksum to the parser itself
    (bad / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        load_model(bad)
    assert not marker.exists()


def test_wrong_class_count_is_refused(
    saved: tuple[SegmentationModel, Path], tmp_path: Path
) -> None:
    _, folder = saved
    bad = _copy(folder, tmp_path / "three")
    doc = json.loads((bad / "model.json").read_text())
    doc["classes"], doc["colors"] = doc["classes"][:3], doc["colors"][:3]
    (bad / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="4 classes but 'classes' names 3"):
        load_model(bad)
    for part in ("classifier", "segmenter"):
        doc["architecture"][part]["num_classes"] = 3
    (bad / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="wrong shape"):
        load_model(bad)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("no_folder", "does not exist"),
        ("no_json", "model.json is missing"),
        ("no_weights", "model.safetensors is missing"),
        ("no_colors", r"'colors' is \[\]; allowed"),
        ("bad_json", "not valid JSON"),
        ("other_weights", "does not match model.json"),
        ("changed_weights", "does not match the sha256"),
        ("extra_keys", r"unexpected \(e.g. \['classifier.head.fin"),
        ("missing_keys", r"missing \(e.g. \['classifier.head.fin"),
    ],
)
def test_broken_folders_give_one_clear_error(
    saved: tuple[SegmentationModel, Path],
    variants: dict[str, Path],
    tmp_path: Path,
    damage: str,
    message: str,
) -> None:
    _, folder = saved
    bad = _copy(folder, tmp_path / "bad")
    doc = json.loads((bad / "model.json").read_text())
    weights_from = {"other_weights": "other", "changed_weights": "other", "extra_keys": "lfi"}
    if damage == "no_folder":
        bad = tmp_path / "nowhere"
    elif damage == "no_json":
        (bad / "model.json").unlink()
    elif damage == "no_weights":
        (bad / "model.safetensors").unlink()
    elif damage == "no_colors":
        doc["colors"] = []
    elif damage == "bad_json":
        (bad / "model.json").write_text("{not json")
    elif damage in weights_from:
        (bad / "model.safetensors").write_bytes(
            (variants[weights_from[damage]] / "model.safetensors").read_bytes()
        )
    elif damage == "missing_keys":  # lficam JSON, weights of a model without the FIN
        bad = _copy(variants["lfi"], tmp_path / "lfi")
        (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
        doc = json.loads((bad / "model.json").read_text())
    if (
        damage != "changed_weights"
        and "weights" in doc
        and damage not in ("bad_json", "no_json", "no_folder")
    ):
        doc["weights"].pop("sha256")  # get past the checksum to the check under test
        (bad / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=message):
        load_model(bad)


def test_models_never_unpickle() -> None:
    """No pickle anywhere in models/; `torch.load` only with `weights_only=True`, and only where
    a user's pretrained checkpoint is read (models/pretrained.py)."""
    sources = (Path(__file__).resolve().parents[2] / "models").rglob("*.py")
    for src in sources:
        text = src.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, src
        calls = re.findall(r"torch\.load\(([^)]*)\)", text)
        assert len(calls) == text.count("torch.load"), src  # every mention is a call we can see
        if calls:
            assert src.name == "pretrained.py", src
            assert all("weights_only=True" in args for args in calls), (src, calls)


def test_demo_model_dir_is_package_data() -> None:
    assert demo_model_dir() == Path(__file__).resolve().parents[2] / "models" / "demo_model"


@pytest.mark.parametrize(
    ("name", "meaning"),
    [
        ("Unclassified", "tissue the gate leaves"),
        ("Tissue", "the outline of all the tissue"),
        ("tissue", "cohort.csv's tissue_area_um2 column"),
        ("region", "cohort.csv's region_area_um2 column"),
    ],
)
def test_a_reserved_class_name_is_refused_with_the_file_named(
    tmp_path: Path, name: str, meaning: str
) -> None:
    """`Unclassified` is the outputs' name for tissue the gate leaves with no class, `Tissue`
    the GeoJSON feature (and summary entry) of all the tissue: a model class of either name
    would be two things in QuPath, so model.json is refused before loading."""
    bad = _copy(demo_model_dir(), tmp_path / "bad")
    doc = json.loads((bad / "model.json").read_text())
    doc["classes"][1] = name
    (bad / "model.json").write_text(json.dumps(doc))
    with pytest.raises(
        ModelError, match=rf"model\.json: class name '{name}' is reserved for {meaning}"
    ):
        read_model_json(bad)
    with pytest.raises(ModelError, match="reserved"):
        ModelMeta("m", ["a", name], [(0, 0, 0), (1, 1, 1)])


def test_class_titles_are_kept_and_a_title_of_no_class_is_refused(tmp_path: Path) -> None:
    """model.json's `class_titles` (each class's name spelled out, for the reports) read back
    as written; one naming no class of the model, or not text, is one ModelError naming the
    file; a model without titles writes no key (its bytes, and so its identity, unchanged)."""
    folder = _copy(demo_model_dir(), tmp_path / "titled")
    doc = json.loads((folder / "model.json").read_text())
    doc["class_titles"] = {"TE": "Tumor epithelial", "TAS": "Tumor-associated stroma"}
    (folder / "model.json").write_text(json.dumps(doc))
    _, meta = read_model_json(folder)
    assert meta.class_titles == doc["class_titles"]
    assert meta.to_json()["class_titles"] == doc["class_titles"]
    assert "class_titles" not in ModelMeta("m", ["a"], [(0, 0, 0)]).to_json()
    for titles, message in (
        ({"TUM": "Tumor"}, r"class_titles names 'TUM', which is not one of the classes"),
        ({"TE": 3}, r"'class_titles' is \{'TE': 3\}; allowed: an object of class name -> title"),
    ):
        doc["class_titles"] = titles
        (folder / "model.json").write_text(json.dumps(doc))
        with pytest.raises(ModelError, match=rf"{folder / 'model.json'}: {message}"):
            read_model_json(folder)
