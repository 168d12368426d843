"""The inference model: classifier + DeepLabV3+ + gate, for any device.

`predict` takes raw uint8 tiles on any device and returns CPU float32 probability maps;
`predict_reduced` returns only what the slide path stores (uint8 cores and labels, reduced
on the device), so the pipeline never deals with scaling, normalisation, precision or
device placement, and full maps never cross from a GPU in the slide path.
`predict_reduced` runs in the runtime `to_device` opened (models/runtimes: torch, or the
whole graph compiled by OpenVINO on a CPU); training and `predict` stay in torch.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from . import cpu
from .device import autocast, fit_batch_size, pick_device
from .gate import gated_probabilities
from .meta import ModelMeta
from .precision_calibration import PrecisionCalibration, calibrate_bf16
from .reduction import HostCopier, ReducedOutputs, reduce_tiles
from .runtimes.decision import BF16_IF_CALIBRATED, precision_decision
from .runtimes.graph import Geometry, TileGraph
from .runtimes.select import RuntimeChoice, open_runtime

_log = logging.getLogger(__name__)
_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
_REQUESTS = {**_NAMES, torch.float32: "fp32"}  # to_device's dtype requests


class SegmentationModel(nn.Module):
    """Holds `classifier` (x -> logits (N, K)), `segmenter` (x -> logits (N, K, H, W)), `meta`.

    Any modules with those signatures work (tests use fixed analytic ones).
    """

    _mean: torch.Tensor  # buffers registered in __init__
    _std: torch.Tensor

    def __init__(self, classifier: nn.Module, segmenter: nn.Module, meta: ModelMeta) -> None:
        super().__init__()
        self.classifier = classifier
        self.segmenter = segmenter
        self.meta = meta
        self.autocast_dtype: torch.dtype | None = None
        self.precision_reason = "fp32: the default until to_device chooses"
        # precision "auto" on a CPU with AMX: fp32 vs bf16 on fixed calibration tiles
        self.precision_calibration: PrecisionCalibration | None = None
        # what runs predict_reduced (models.runtimes); torch until to_device opens another
        self.runtime = RuntimeChoice("torch", "torch: the default until to_device chooses")
        self._batch_caps: dict[tuple[int, int], int] = {}  # (tile, requested) -> batch
        self._host = HostCopier()  # pinned buffers for predict_reduced's copies
        # sha256 of the model.json and weight bytes it was loaded from (models.bundle);
        # '' for a model built in memory
        self.identity = ""
        # uint8 (N, 3, T, T) patches training recorded in the model folder, calibrated
        # beside the CMU-1 tiles (models.validation_patches); None when it has none
        self.validation_patches: torch.Tensor | None = None
        norm = meta.normalisation
        self.register_buffer("_mean", torch.tensor(norm["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(norm["std"]).view(1, 3, 1, 1), persistent=False)
        self.eval()

    @property
    def device(self) -> torch.device:
        """Where the weights live."""
        return self._mean.device

    def to_device(
        self,
        device: str | torch.device = "auto",
        precision: str | torch.dtype | None = "auto",
        runtime: str = "torch",
        decided_runtime: tuple[str, str] | None = None,
        decided_precision: tuple[str, str] | None = None,
        cores: int | None = None,
    ) -> SegmentationModel:
        """Move to `device` (auto/cpu/cuda), open `runtime` (auto/torch/openvino: the request)
        and run the precision decided for `precision` (auto/fp32/bf16/fp16, the request).
        `decided_runtime`, `decided_precision`: the run policy's (value, reason), run as
        decided (`open_runtime`); without them (a model loaded outside a run) the same
        functions decide here (`runtime_decision`, `precision_decision`). `cores`: the
        threads of a runtime other than torch (the run policy's cores of this process; None:
        this thread's torch count).

        Weights stay fp32 and channels_last (faster on oneDNN and tensor cores alike);
        reduced precision is autocast. `bf16-if-calibrated` runs the calibration
        (`calibrate_bf16`): bf16 where the model keeps its labels and class areas in bf16 on
        real calibration tiles, else fp32, a function of the model and the machine, so every
        run and every process of a run chooses the same. A runtime other than torch runs its
        precision itself (`models.runtimes.select.open_runtime`); torch then stays fp32 for
        `predict`.
        """
        dev = pick_device(device)
        request = (
            precision if isinstance(precision, str) else _REQUESTS.get(precision, str(precision))
        )
        flags = cpu.cpu_flags()
        if decided_precision is None or decided_runtime is None:
            decided_precision = None  # the policy's is for the runtime it decided, if any
        # as pipeline.machine describes a GPU to the policy: bf16 from compute capability 8
        gpu_bf16 = dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 8
        # torch's, should torch run; checks the request before anything moves
        in_torch = precision_decision(request, dev.type, "torch", flags, gpu_bf16)
        self.to(dev)
        self.to(memory_format=torch.channels_last)
        self.precision_calibration = None
        self.autocast_dtype = None
        self.runtime = open_runtime(
            self, runtime, request, dev.type, flags, None, decided_runtime, decided_precision, cores
        )
        if self.runtime.graphs is not None:
            self.precision_calibration = self.runtime.calibration
            self.precision_reason = self.runtime.precision_reason
            return self
        planned = decided_runtime[0] if decided_runtime is not None else None
        if decided_precision is None or self.runtime.runtime != planned:
            decided_precision = in_torch  # decided for another runtime, or not at all
        value, reason = decided_precision
        if value == BF16_IF_CALIBRATED:
            self.precision_calibration = self._calibrate()
            bf16 = self.precision_calibration.bf16_chosen
            self.autocast_dtype = torch.bfloat16 if bf16 else None
            self.precision_reason = self.precision_calibration.reason()
            _log.info("precision auto: %s", self.precision_reason)
        else:
            self.autocast_dtype = _DTYPES[value]
            self.precision_reason = reason
        return self

    def tile_graph(self, geometry: Geometry) -> TileGraph:
        """This model's whole tile graph at `geometry` (normalisation, classifier, gate,
        segmenter, reduction) as one module sharing these weights: what a runtime compiles."""
        return TileGraph(
            self.classifier, self.segmenter, self._mean, self._std, geometry, self.meta.gate_epsilon
        )

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 (or float already in [0, 1]) on any device -> normalised float here."""
        x = tiles.to(self.device, non_blocking=True)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict(self, tiles: torch.Tensor, gate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(seg_probs (N, K, T, T), cls_probs (N, K)), CPU float32.

        seg_probs = softmax of the DeepLabV3+ logits over K, with class k zeroed in tiles
        where the classifier's sigmoid probability <= meta.gate_epsilon (if `gate`).
        """
        return self._predict(tiles, gate, self.autocast_dtype)

    @torch.inference_mode()
    def predict_reduced(
        self,
        tiles: torch.Tensor,
        margin: int,
        core: int,
        downsample: int,
        gate: bool = True,
    ) -> ReducedOutputs:
        """What the slide path stores, reduced on the device (models/reduction.py).

        The same forward, softmax and gate as `predict`; then each tile's centre core
        `[margin, margin + core)` is averaged over `downsample` x `downsample` blocks,
        labelled by the module's rule (argmax of the gated values before quantisation;
        `UNCLASSIFIED` in a tile whose classes the gate removed all) and quantised to uint8.
        Only those and the classifier's probabilities are copied to the host. `evaluate`
        scores `predict_reduced(tiles, 0, T, 1)`: the slide path's labels of whole tiles.
        """
        if self.runtime.graphs is not None:
            return self.runtime.graphs.predict_reduced(tiles, margin, core, downsample, gate)
        seg_probs, cls_probs, keep, seg_logits = self._forward(tiles, gate, self.autocast_dtype)
        probs, labels = reduce_tiles(seg_probs, seg_logits, keep, margin, core, downsample)
        probs, labels, cls_probs = self._host.to_host([probs, labels, cls_probs])
        return ReducedOutputs(probs, labels, cls_probs)

    def _predict(
        self, tiles: torch.Tensor, gate: bool, dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        seg_probs, cls_probs, _keep, _logits = self._forward(tiles, gate, dtype)
        return seg_probs.contiguous().cpu(), cls_probs.cpu()

    def _forward(
        self, tiles: torch.Tensor, gate: bool, dtype: torch.dtype | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gated seg_probs float32, cls_probs, kept classes (N, K) bool, seg_logits) on the
        model's device: the one forward both `predict` and `predict_reduced` use."""
        if tiles.ndim != 4 or tiles.shape[1] != 3:
            raise ValueError(f"predict expects tiles (N, 3, H, W), got {tuple(tiles.shape)}")
        self.eval()
        x = self.preprocess(tiles)
        with autocast(self.device, dtype):
            cls_logits = self.classifier(x)
            seg_logits = self.segmenter(x)
        epsilon = self.meta.gate_epsilon if gate else None
        seg_probs, cls_probs, keep = gated_probabilities(seg_logits, cls_logits, epsilon)
        return seg_probs, cls_probs, keep, seg_logits

    def torch_labels(self, tiles: torch.Tensor, bf16: bool) -> torch.Tensor:
        """The slide path's labels (N, T, T) of whole tiles in torch, fp32 or bf16 autocast."""
        dtype = torch.bfloat16 if bf16 else None
        seg_probs, _cls, keep, seg_logits = self._forward(tiles, True, dtype)
        t = int(tiles.shape[-1])
        return reduce_tiles(seg_probs, seg_logits, keep, 0, t, 1)[1].cpu()

    @torch.inference_mode()
    def _calibrate(self) -> PrecisionCalibration:
        """torch fp32 against bf16 on the real calibration tiles, at the model's tile size."""
        tile = int(self.meta.tile_size)
        return calibrate_bf16(self.torch_labels, tile, "the CPU has AMX", self.validation_patches)

    def precision_report(self) -> dict[str, object]:
        """What the forward passes ran in, and why (for summary.json)."""
        calibration = self.precision_calibration
        ran = self.runtime.precision if self.runtime.graphs is not None else None
        return {
            "device": self.device.type,
            "autocast": ran or _NAMES[self.autocast_dtype],
            "channels_last": True,
            "reason": self.precision_reason,
            "calibration": calibration.as_dict() if calibration is not None else None,
            **self.runtime.report(),
        }

    def batch_limit(self, tile: int, requested: int, probe: int = 2) -> int:
        """`requested` on the CPU; on a GPU, capped to what its free memory holds.

        The working memory per tile is measured once per (tile, requested) with a probe
        forward pass of `probe` blank tiles (peak allocated minus what was allocated before),
        then `fit_batch_size` leaves 20 % headroom. Call it under the model's lock.
        """
        if self.device.type != "cuda":
            return int(requested)
        key = (int(tile), int(requested))
        if key not in self._batch_caps:
            dev = self.device
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
            self.predict(torch.zeros((probe, 3, tile, tile), dtype=torch.uint8), gate=True)
            torch.cuda.synchronize(dev)
            per_tile = (torch.cuda.max_memory_allocated(dev) - before) / probe
            free, _total = torch.cuda.mem_get_info(dev)
            self._batch_caps[key] = fit_batch_size(requested, free, per_tile)
        return self._batch_caps[key]
