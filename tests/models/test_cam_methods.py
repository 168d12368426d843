"""The CAM-method registry: one list for every door, head requirements, model.json records."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from wsi_segment.errors import ConfigError
from wsi_segment.models import cams
from wsi_segment.models.bundle import load_model
from wsi_segment.models.cam_methods import (
    CAM_METHODS,
    LEGACY_RECORD,
    PSEUDO_MASK_METHODS,
    check_head,
    pseudo_mask_record,
    recorded_method,
)
from wsi_segment.models.heads import HEADS
from wsi_segment.models.model_json import check_model_json

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo_model"


def test_registry_is_what_cams_implements() -> None:
    assert cams.METHODS == ("gradcam", "cam", "scorecam", "lficam", "scorecam-ref", "lficam-ref")
    assert PSEUDO_MASK_METHODS == ("gradcam", "cam", "scorecam", "lficam", "scorecam-ref")
    for spec in CAM_METHODS.values():  # a required head is a real head
        assert spec.head is None or spec.head in HEADS


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
