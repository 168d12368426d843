"""The CAM-method registry: one list for every door and the functions that compute each
method, head requirements, model.json records; one entry is all a new method takes."""

from __future__ import annotations

import copy
import inspect
import json
from pathlib import Path

import pytest
import torch

from wsi_segment.errors import ConfigError
from wsi_segment.flows.cli import build_parser
from wsi_segment.lazy_exports import FunctionRef
from wsi_segment.models import cams
from wsi_segment.models.bundle import load_model
from wsi_segment.models.cam_methods import (
    CAM_METHODS,
    LEGACY_RECORD,
    CamMethod,
    check_head,
    pseudo_mask_methods,
    pseudo_mask_record,
    recorded_method,
)
from wsi_segment.models.heads import HEADS
from wsi_segment.models.model_json import check_model_json

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo_model"


def test_registry_holds_the_functions_of_models_cams() -> None:
    assert list(CAM_METHODS) == [
        "gradcam",
        "cam",
        "scorecam",
        "lficam",
        "scorecam-ref",
        "lficam-ref",
    ]
    assert pseudo_mask_methods() == ("gradcam", "cam", "scorecam", "lficam", "scorecam-ref")
    for name, spec in CAM_METHODS.items():
        assert spec.name == name
        assert spec.head is None or spec.head in HEADS  # a required head is a real head
        maps = spec.maps.resolve()
        assert inspect.getmodule(maps) is cams
        wanted = ["classifier", "x", "layer"] if spec.any_tap else ["classifier", "x"]
        assert list(inspect.signature(maps).parameters)[: len(wanted)] == wanted, name
        assert "normalise" in inspect.signature(maps).parameters
    assert [n for n, s in CAM_METHODS.items() if s.at_taps is not None] == ["gradcam"]
    assert CAM_METHODS["gradcam"].at_taps == FunctionRef("wsi_segment.models.cams:grad_cams")


def flat_maps(classifier: object, x: torch.Tensor, layer: str, *, normalise: str) -> torch.Tensor:
    """A trivial extra method: class k's map is k + 1 everywhere, at any tap."""
    n, _, h, w = x.shape
    return torch.arange(1.0, 4.0).view(1, 3, 1, 1).expand(n, 3, h, w).clone()


@pytest.fixture
def flat_method(monkeypatch: pytest.MonkeyPatch) -> str:
    spec = CamMethod(
        "flat",
        "a test's method",
        any_tap=True,
        head=None,
        relu=True,
        cost="nothing",
        maps=FunctionRef(f"{__name__}:flat_maps"),
    )
    monkeypatch.setitem(CAM_METHODS, spec.name, spec)
    return spec.name


def test_a_registered_method_is_offered_run_and_recorded(flat_method, tiny_classifier) -> None:
    from wsi_segment.models.pseudo_masks import pseudo_masks

    assert flat_method in pseudo_mask_methods()
    args = build_parser().parse_args(
        ["train", "--data", "d", "--out", "o", "--cam-method", flat_method]
    )
    assert args.cam_method == flat_method
    clf = tiny_classifier("pda", 3)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(
        cams.activation_maps(flat_method, clf, x, "mid"),
        flat_maps(clf, x, "mid", normalise="class"),
    )
    images = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)  # no white background
    masks = pseudo_masks(
        clf, images, torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]), method=flat_method
    )
    assert len(masks) == 3  # one per depth
    assert (masks[0][0] == 1).all() and (masks[0][1] == 0).all()  # the highest present class
    check_head(flat_method, "lficam")  # it needs no head
    doc = copy.deepcopy(_demo_doc())
    doc["provenance"]["pseudo_masks"] = pseudo_mask_record(flat_method, ["deep"], ["layer4"], True)
    assert check_model_json(doc, "m/model.json") is None


@pytest.mark.parametrize("head", sorted(HEADS))
def test_only_the_lficam_methods_need_their_heads(head: str) -> None:
    for method in ("gradcam", "cam", "scorecam", "scorecam-ref"):
        check_head(method, head)  # every head, PCAM included, gives these
    for method in ("lficam", "lficam-ref"):
        if head == method:
            check_head(method, head)
            continue
        with pytest.raises(ConfigError) as err:
            check_head(method, head)
        assert str(err.value).startswith(
            f"--cam-method {method} needs --head {method}, not --head {head}"
        )
        assert "gradcam, cam, scorecam, scorecam-ref work with any head" in str(err.value)


def test_unknown_method_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown CAM method 'gradcam\+\+'; choose one of"):
        check_head("gradcam++", "pda")


def test_record_per_method() -> None:
    taps = ["layer2", "layer3", "layer4"]
    grad = pseudo_mask_record("gradcam", ["shallow", "mid", "deep"], taps, True)
    assert grad == {**LEGACY_RECORD, "background": True}  # the default is what old models used
    score = pseudo_mask_record("scorecam", ["shallow", "mid", "deep"], taps, False)
    assert (score["method"], score["relu"], score["background"]) == ("scorecam", True, False)


def _demo_doc() -> dict:
    doc: dict = json.loads((DEMO / "model.json").read_text())
    return doc


def test_model_json_without_a_record_loads_as_grad_cam() -> None:
    doc = _demo_doc()
    assert "pseudo_masks" not in doc["provenance"]  # trained before the method was recorded
    model = load_model(DEMO)
    assert recorded_method(model.meta.provenance) == LEGACY_RECORD
    assert recorded_method(None) == LEGACY_RECORD
    assert recorded_method({"pseudo_masks": None}) == LEGACY_RECORD


@pytest.mark.parametrize(
    "record, problem",
    [
        (pseudo_mask_record("lficam", ["deep"], ["layer4"], True), None),
        (None, None),
        (
            {"method": "gradcam++"},
            "'provenance.pseudo_masks.method' is 'gradcam++'; allowed: one of",
        ),
        ({"layers": ["deep"]}, "missing 'provenance.pseudo_masks.method'"),
        ({"method": "cam", "taps": ["layer9"]}, "'provenance.pseudo_masks.taps'"),
        ({"method": "cam", "relu": 1}, "'provenance.pseudo_masks.relu' is 1; allowed: true or"),
        ("gradcam", "'provenance.pseudo_masks' is 'gradcam'"),
    ],
)
def test_model_json_checks_the_record(record: object, problem: str | None) -> None:
    doc = copy.deepcopy(_demo_doc())
    doc["provenance"]["pseudo_masks"] = record
    found = check_model_json(doc, "m/model.json")
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith("m/model.json: ") and problem in found


def test_a_class_agnostic_map_makes_no_pseudo_masks() -> None:
    """lficam-ref gives one map for every class: argmax over present classes would always
    pick the first, so pseudo masks refuse it (heat maps take it)."""
    import torch

    from wsi_segment.models.classifier import build_classifier
    from wsi_segment.models.pseudo_masks import pseudo_masks

    clf = build_classifier("resnet10t", "lficam-ref", 4).eval()
    images = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8)
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    with pytest.raises(ConfigError, match="lficam-ref gives one class-agnostic map"):
        pseudo_masks(clf, images, labels, method="lficam-ref")
    maps = cams.activation_maps("lficam-ref", clf, images.float() / 255)
    assert torch.equal(maps[:, 0], maps[:, 3])  # the same map for every class
    assert len(pseudo_masks(clf, images, labels, method="cam")) == 3  # per-class methods work
