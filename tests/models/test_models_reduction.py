"""The tile graph run by the torch executor (on the CPU device) against the CPU reference:
predict's full maps reduced in numpy as the pipeline used to (tests/reference_inference.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import run_tiles
from tests.reference_inference import (
    label_quantised,
    near_rounding_boundary,
    pooled_cores,
    quantise,
    unique_positive_max,
)
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.labels import UNCLASSIFIED
from wsi_segment.models.meta import ModelMeta
from wsi_segment.models.reduction import (
    NODATA,
    HostCopier,
    label_pixels,
    reduce_tiles,
    tile_labels,
)
from wsi_segment.models.runtimes.executor import CudaGraphExecutor, TorchExecutor
from wsi_segment.models.runtimes.tile_io import Geometry
from wsi_segment.models.segmentation_model import SegmentationModel
from wsi_segment.models.segmenter import build_segmenter

CLASSES = ["a", "b", "c", "d"]
META = ModelMeta("small", CLASSES, [(255, 0, 0), (0, 255, 0), (0, 0, 255), (9, 9, 9)], 1.0, 32)
MARGIN, CORE, D = 4, 24, 4  # tile 32 = 4 + 24 + 4


def _tiles(n: int = 6, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _small_model() -> SegmentationModel:
    """A real randomly initialised classifier + DeepLabV3+ (seeded), its gate's epsilon in
    the widest gap between the middle half of the test tiles' classifier probabilities: the
    gate removes about half of the (tile, class) pairs, and no probability lies at the
    threshold, where another device's arithmetic (TF32 on a GPU) would flip it."""
    torch.manual_seed(0)
    model = SegmentationModel(
        build_classifier("resnet10t", "cam", 4),
        build_segmenter("tu-resnet10t", 4, decoder_channels=32),
        dataclasses.replace(META),
    )
    _, cls = model.to_device("cpu").predict(_tiles(), gate=False)
    values = cls.flatten().sort().values
    middle = values[len(values) // 4 : 3 * len(values) // 4 + 1]
    widest = int((middle[1:] - middle[:-1]).argmax())
    model.meta.gate_epsilon = float(middle[widest : widest + 2].mean())
    return model


def _reference(model: SegmentationModel, tiles: torch.Tensor, gate: bool = True, dtype=None):
    seg, cls = model.predict(tiles, gate=gate, dtype=dtype)
    pooled = pooled_cores(seg.numpy(), MARGIN, CORE, D)
    u8 = quantise(pooled)
    return pooled, u8, label_quantised(u8), cls.numpy()


def _assert_matches_reference(got, pooled, u8, ref_labels, cls, max_level: int = 1) -> None:
    probs = got.probs
    labels = got.labels
    assert probs.dtype == labels.dtype == np.uint8
    assert probs.shape == u8.shape and labels.shape == ref_labels.shape
    diff = np.abs(probs.astype(int) - u8.astype(int))
    # identical except where float sums in another order may round a half level apart
    assert diff.max() <= max_level
    assert not diff[~near_rounding_boundary(pooled)].any()
    np.testing.assert_array_equal(got.cls_probs, cls)
    # labels before quantisation: the same class wherever the uint8 values had one clear
    # maximum; where they tie (or all round to 0), the class with the larger float value
    clear = unique_positive_max(u8)
    np.testing.assert_array_equal(labels[clear], ref_labels[clear])
    np.testing.assert_array_equal(labels[~clear], pooled.argmax(axis=1)[~clear])


@pytest.mark.parametrize("gate", [True, False])
def test_fp32_equals_cpu_reference(gate: bool) -> None:
    model = _small_model().to_device("cpu")
    tiles = _tiles()
    pooled, u8, ref_labels, cls = _reference(model, tiles, gate)
    got = run_tiles(model, tiles, MARGIN, CORE, D, gate=gate)
    _assert_matches_reference(got, pooled, u8, ref_labels, cls, max_level=1)
    assert (cls <= model.meta.gate_epsilon).any(), "the gate must have something to remove"
    assert got.probs.shape == (6, 4, CORE // D, CORE // D) and got.labels.shape == (6, 6, 6)
    assert got.nbytes == 6 * (4 * 36 + 36 + 4 * 4)


def test_bf16_within_one_level_of_reference() -> None:
    model = _small_model().to_device("cpu")
    tiles = _tiles(seed=2)
    pooled, u8, ref_labels, cls = _reference(model, tiles, dtype=torch.bfloat16)
    got = run_tiles(model, tiles, MARGIN, CORE, D, precision="bf16")
    _assert_matches_reference(got, pooled, u8, ref_labels, cls, max_level=1)


class FixedLogits(nn.Module):
    """(N, K, T, T) logits: `base` per class, plus `ramp` x (column - T/2) on class 1, so
    class 1 beats class 2 on the right half of each tile and loses on the left half."""

    def __init__(self, base: list[float], ramp: float = 0.0) -> None:
        super().__init__()
        self.base = torch.tensor(base)
        self.ramp = ramp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = self.base.view(1, -1, 1, 1).expand(n, -1, h, w).clone()
        out[:, 1] += self.ramp * (torch.arange(w, dtype=out.dtype) - w / 2 + 0.5)
        return out


class FixedClassifier(nn.Module):
    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def _fixed(seg_base: list[float], cls_logits: list[float], ramp: float = 0.0):
    model = SegmentationModel(FixedClassifier(cls_logits), FixedLogits(seg_base, ramp), META)
    return model.to_device("cpu")


def test_gate_removing_the_sure_class_leaves_the_best_remaining_class() -> None:
    """The segmenter is sure of class 0 (p = 0.9998); the classifier rules class 0 out. The
    other classes' gated probabilities all round to 0, yet each pixel gets the best of them
    (class 1 on the right half of the tile, class 2 on the left), never nodata."""
    model = _fixed([10.0, 1.0, 1.0, -5.0], [-10.0, 10.0, 10.0, 10.0], ramp=0.01)
    tiles = _tiles(2)
    got = run_tiles(model, tiles, MARGIN, CORE, D)
    _pooled, u8, ref_labels, _ = _reference(model, tiles)
    assert (u8 == 0).all() and (got.probs == 0).all()  # every kept class rounds to 0
    assert (ref_labels == NODATA).all()  # the old path: a hole where the gate acted
    cols = MARGIN + D * np.arange(CORE // D) + (D - 1) / 2  # output pixel centres
    want = np.where(cols > 15.5, 1, 2).astype(np.uint8)
    np.testing.assert_array_equal(got.labels, np.broadcast_to(want, (2, 6, 6)))


def test_labels_when_kept_classes_underflow_or_every_class_is_gated() -> None:
    # class 0's logit is 200 above the others: their softmax is exactly 0 in float32; gated
    # class 0 leaves all zeros, and the label is the kept class with the highest mean logit
    model = _fixed([200.0, 0.0, 1.0, -1.0], [-10.0, 10.0, 10.0, 10.0])
    got = run_tiles(model, _tiles(1), MARGIN, CORE, D)
    assert (got.probs == 0).all() and (got.labels == 2).all()
    # the classifier rules every class out: no class can be claimed, the tissue is
    # Unclassified (254), never "not analysed" (255)
    model = _fixed([10.0, 1.0, 1.0, -5.0], [-10.0, -10.0, -10.0, -10.0])
    got = run_tiles(model, _tiles(1), MARGIN, CORE, D)
    assert UNCLASSIFIED == 254
    assert (got.probs == 0).all() and (got.labels == UNCLASSIFIED).all()
    # without the gate the same tile has a class
    got = run_tiles(model, _tiles(1), MARGIN, CORE, D, gate=False)
    assert (got.labels == 0).all()


def test_label_rule_exact_on_small_tensors() -> None:
    """The rule on 3 tiles x 2 pixels, K = 3: tile 0 keeps classes 1 and 2 (argmax of the
    gated values; a pixel whose kept values are all 0 falls back to the kept class with the
    higher logit), tile 1 keeps every class, tile 2 none (Unclassified)."""
    probs = torch.tensor(
        [
            [[0.0, 0.0], [0.3, 0.0], [0.1, 0.0]],  # tile 0: class 0 gated (zeroed)
            [[0.2, 0.1], [0.5, 0.1], [0.3, 0.8]],
            [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],  # tile 2: every class gated
        ]
    ).view(3, 3, 1, 2)
    logits = torch.tensor(
        [
            [[9.0, 9.0], [1.0, -3.0], [0.0, -2.0]],  # pixel 1 of tile 0: class 2 (-2 > -3)
            [[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]],
            [[5.0, 5.0], [0.0, 0.0], [0.0, 0.0]],
        ]
    ).view(3, 3, 1, 2)
    keep = torch.tensor([[False, True, True], [True, True, True], [False, False, False]])
    got = label_pixels(probs, logits, keep)
    assert got.view(3, 2).tolist() == [[1, 2], [1, 2], [UNCLASSIFIED, UNCLASSIFIED]]
    assert label_pixels(probs, logits, keep, unclassified=7)[2].unique().tolist() == [7]


def test_tile_labels_equal_the_tile_graph_of_whole_tiles() -> None:
    """`tile_labels` (training code's modules) and the slide path's tile graph of the
    whole tile (margin 0, core T, d 1) label alike, gated tiles included."""
    model = _small_model().to_device("cpu")
    tiles = _tiles()
    for eps in (model.meta.gate_epsilon, 0.9999):
        model.meta.gate_epsilon = eps
        want = run_tiles(model, tiles, 0, 32, 1).labels
        x = model.preprocess(tiles)
        with torch.no_grad():
            got = tile_labels(model.segmenter(x), model.classifier(x), eps)
        np.testing.assert_array_equal(got.numpy(), want)
    assert (want == UNCLASSIFIED).all()  # epsilon 0.9999 gates every class of every tile


def test_reduce_tiles_exact_on_known_values() -> None:
    """Core crop and block mean on values that are exact in float32 (multiples of 1/16)."""
    probs = torch.zeros(1, 2, 8, 8)
    probs[0, 0, 2:6, 2:6] = torch.arange(16, dtype=torch.float32).view(4, 4) / 16
    probs[0, 1] = 1 - probs[0, 0]
    probs[0, :, :2] = 7.0  # margin rows: cropped away
    keep = torch.ones(1, 2, dtype=torch.bool)
    u8, labels = reduce_tiles(probs, probs.log(), keep, margin=2, core=4, downsample=2)
    means = torch.tensor([[2.5, 4.5], [10.5, 12.5]]) / 16  # 2 x 2 block means
    want0 = torch.round(means * 255).to(torch.uint8)
    torch.testing.assert_close(u8[0, 0], want0, rtol=0, atol=0)
    torch.testing.assert_close(u8[0, 1], torch.round((1 - means) * 255).to(torch.uint8))
    torch.testing.assert_close(labels[0], torch.tensor([[1, 1], [0, 0]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of the downsample"):
        reduce_tiles(probs, probs, keep, margin=2, core=3, downsample=2)


def test_host_copier_on_the_cpu_returns_the_values() -> None:
    a = torch.arange(12, dtype=torch.uint8).view(3, 4).t()  # not contiguous
    (out,) = HostCopier().to_host([a])
    assert out.is_contiguous() and torch.equal(out, a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_reduction_matches_cpu_and_reuses_pinned_buffers() -> None:
    model = _small_model().to_device("cpu")
    tiles = _tiles()
    want = run_tiles(model, tiles, MARGIN, CORE, D)
    model.to_device("cuda")
    executor = TorchExecutor(model, Geometry(32, MARGIN, CORE, D, True), "fp32")
    got = executor.run(tiles.permute(0, 2, 3, 1))
    assert isinstance(got.probs, np.ndarray)  # copied to the host
    assert np.abs(got.probs.astype(int) - want.probs.astype(int)).max() <= 1
    pointers = [b.data_ptr() for b in executor._host._buffers]
    assert all(b.is_pinned() for b in executor._host._buffers)
    executor.run(tiles[:3].permute(0, 2, 3, 1))  # a smaller batch reuses them
    assert [b.data_ptr() for b in executor._host._buffers] == pointers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_graph_replays_the_eager_tile_graph_byte_for_byte() -> None:
    """At one batch size the captured graph runs the eager pass's kernels: the same bytes,
    batch after batch (its input and outputs are reused), at fp32 and bf16; another batch
    size is refused rather than run in a graph of the wrong shape."""
    model = _small_model().to_device("cuda")
    geometry = Geometry(32, MARGIN, CORE, D, True)
    for precision in ("fp32", "bf16"):
        eager = TorchExecutor(model, geometry, precision)
        graph = CudaGraphExecutor(TorchExecutor(model, geometry, precision), 6)
        for seed in (1, 2, 1):
            tiles = _tiles(seed=seed).permute(0, 2, 3, 1)
            want, got = eager.run(tiles), graph.run(tiles.cuda())
            for name in ("probs", "labels", "cls_probs"):
                got_array, want_array = getattr(got, name), getattr(want, name)
                assert np.array_equal(got_array, want_array), (precision, name)
        with pytest.raises(ValueError, match="graph of 6 tiles was handed 3"):
            graph.run(tiles[:3])


def test_a_host_copier_deep_copies_and_pickles() -> None:
    """The copier's lock and pinned buffers are per object: copies start fresh."""
    import copy
    import pickle

    from wsi_segment.models.reduction import HostCopier

    copier = HostCopier()
    copier._buffers.append(torch.zeros(4, dtype=torch.uint8))
    for clone in (copy.deepcopy(copier), pickle.loads(pickle.dumps(copier))):
        assert clone._buffers == [] and clone._lock is not copier._lock
        assert clone.to_host([torch.ones(2)])[0].tolist() == [1.0, 1.0]
