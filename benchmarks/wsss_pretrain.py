"""A pretrained start for the WSSS benchmark: encoders trained once on another synthetic task.

The paper starts from ImageNet weights; offline, the benchmark stands in for them with a
task that shares no classes or textures with the test task: six procedural textures (three
noise scales x two dye pairs unlike H&E), one per patch, learnt by plain cross-entropy. The
encoder's weights are saved as a local safetensors file, which the benchmark then passes to
`--pretrained` / `--seg-pretrained` (`TrainConfig.pretrained` / `seg_pretrained`), the same
path a lab's own weights file takes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsi_segment.models.classifier import build_classifier
from wsi_segment.synthetic.textures import fbm, value_noise

#: (noise scale in px, dye pair) per class: what the pretraining task tells apart.
SCALES = (3.0, 9.0, 24.0)
DYES = (
    (np.array([0.15, 0.55, 0.85]), np.array([0.70, 0.35, 0.10])),  # blue on amber
    (np.array([0.60, 0.15, 0.60]), np.array([0.10, 0.60, 0.30])),  # magenta on green
)
NUM_CLASSES = len(SCALES) * len(DYES)


def texture_patch(cls: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 (size, size, 3) of pretraining class `cls` at a random place and orientation."""
    scale, (d1, d2) = SCALES[cls % len(SCALES)], DYES[cls // len(SCALES)]
    seed = int(rng.integers(0, 2**31))
    oy, ox = rng.integers(0, 1 << 20, size=2)
    y = np.arange(size, dtype=np.float64)[:, None] + oy
    x = np.arange(size, dtype=np.float64)[None, :] + ox
    a = fbm(y, x, scale, seed)
    b = value_noise(y, x, 2.5 * scale, seed + 1)
    od = (0.2 + 1.1 * a)[..., None] * d1 + (0.1 + 0.9 * b)[..., None] * d2
    od *= rng.uniform(0.8, 1.2)
    rgb = np.clip(255.0 * np.exp(-od) + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.rot90(rgb, int(rng.integers(0, 4))))


def texture_set(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` patches (N, 3, H, W) float in [0, 1] and their classes, balanced."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % NUM_CLASSES
    images = np.stack([texture_patch(int(c), size, rng) for c in labels])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return x, torch.from_numpy(labels).long()


def pretrain_encoder(
    encoder: str, out: Path, *, n: int, size: int, epochs: int, seed: int = 1234
) -> Path:
    """Train `encoder` with a CAM head on the texture task; save its weights to `out`.

    Returns `out`; a file already there is kept (the same task and seed make the same file).
    """
    if out.is_file():
        return out
    from safetensors.torch import save_file

    t0 = time.time()
    x, y = texture_set(n, size, seed)
    torch.manual_seed(seed)
    model = build_classifier(encoder, {"kind": "cam", "dropout": 0.0}, NUM_CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    steps, total = 0, epochs * ((n + 15) // 16)
    for epoch in range(epochs):
        model.train()
        correct = 0
        for idx in torch.randperm(n, generator=gen).split(16):
            for group in opt.param_groups:
                group["lr"] = 2e-3 * (1 - steps / total) ** 0.9
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            correct += int((logits.argmax(1) == y[idx]).sum())
        print(
            f"pretrain epoch {epoch + 1}/{epochs}: train accuracy {correct / n:.3f} "
            f"({time.time() - t0:.0f} s)",
            flush=True,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone
    if not isinstance(backbone, torch.nn.Module):  # build_classifier's Backbone always is
        raise TypeError("the pretrained encoder must be an nn.Module to be saved")
    weights = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    save_file(weights, str(out))
    return out
