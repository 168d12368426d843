"""Named recipes: exact parameter groups, frozen BatchNorm and stages, poly schedule per group."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from wsi_segment.errors import ConfigError
from wsi_segment.models.classifier import build_classifier
from wsi_segment.models.segmenter import build_segmenter
from wsi_segment.pipeline.training.recipes import (
    RECIPES,
    freeze,
    make_optimizer,
    resolve_recipe,
    train_mode,
)
from wsi_segment.pipeline.training.train_classifier import schedule_lrs
from wsi_segment.pipeline.training.train_config import (
    TrainConfig,
    classifier_config,
    preset_record,
    recipe_choices,
    segmenter_config,
)

PAPER = RECIPES["paper"]


def _groups(opt: torch.optim.Optimizer, model: nn.Module) -> list[tuple[float, float, set[str]]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [
        (g["lr"], g["weight_decay"], {names[id(p)] for p in g["params"]}) for g in opt.param_groups
    ]


def test_paper_stage1_groups_and_freezing() -> None:
    torch.manual_seed(0)
    model = build_classifier("resnet10t", "pda", 4)
    freeze(model, model.backbone, PAPER.stage1)
    opt, base = make_optimizer(model, [model.head], PAPER.stage1)

    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    convs = {
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
        and n.startswith(("backbone.body.layer2", "backbone.body.layer3", "backbone.body.layer4"))
    }
    assert _groups(opt, model) == [
        (0.01, 5e-4, {f"{n}.weight" for n in convs}),  # encoder weights; BN and stem+layer1 frozen
        (0.1, 5e-4, {"head.fc.weight"}),  # the new classifier layer at 10x
    ]
    assert base == [0.01, 0.1]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.weight" for n in convs} | {"head.fc.weight"}


def test_bias_groups_get_their_multiplier_and_decay() -> None:
    """Stage 3 of the paper recipe with --bias-lr-mult 2: four groups, exact lr and wd."""
    recipe = resolve_recipe("paper", False, bias_lr_mult=2.0)
    seg = build_segmenter("tu-resnet10t", 4, decoder_channels=16)
    freeze(seg, seg.net.encoder, recipe.stage3)
    opt, _ = make_optimizer(seg, [seg.net.decoder, seg.net.segmentation_head], recipe.stage3)
    groups = _groups(opt, seg)
    assert [(lr, wd) for lr, wd, _ in groups] == [
        (0.01, 5e-4), (0.02, 5e-4), (0.1, 5e-4), (0.2, 5e-4)
    ]  # fmt: skip
    enc, enc_bias, head, head_bias = (names for _, _, names in groups)
    assert all(n.startswith("net.encoder.") and not n.endswith(".bias") for n in enc)
    assert all(n.startswith("net.encoder.") and n.endswith(".bias") for n in enc_bias)
    assert "net.segmentation_head.0.bias" in head_bias and not any(n.endswith("bias") for n in head)
    assert len(enc | enc_bias | head | head_bias) == len(list(seg.parameters()))  # BN trains
    # the paper's stage 1 keeps biases out of weight decay
    s1 = replace(PAPER.stage1, freeze_bn=False, frozen_stages=())
    opt1, _ = make_optimizer(seg, [seg.net.decoder, seg.net.segmentation_head], s1)
    assert [(g["lr"], g["weight_decay"]) for g in opt1.param_groups] == [
        (0.01, 5e-4), (0.02, 0.0), (0.1, 5e-4), (0.2, 0.0)
    ]  # fmt: skip
    # --bias-weight-decay puts them back in, in both stages; --no-bias-weight-decay takes
    # them out of the default recipe's one group (then groups: weights, biases)
    back = resolve_recipe("paper", True, bias_weight_decay=True)
    assert back.stage1.bias_weight_decay and back.stage3.bias_weight_decay
    s1 = replace(back.stage1, freeze_bn=False, frozen_stages=())
    opt1, _ = make_optimizer(seg, [seg.net.decoder, seg.net.segmentation_head], s1)
    assert [g["weight_decay"] for g in opt1.param_groups] == [5e-4] * 4
    out = resolve_recipe("default", False, bias_weight_decay=False).stage1
    opt2, _ = make_optimizer(seg, [seg.net.decoder, seg.net.segmentation_head], out)
    assert [(g["lr"], g["weight_decay"]) for g in opt2.param_groups] == [
        (1e-3, 1e-4), (1e-3, 0.0), (1e-3, 1e-4), (1e-3, 0.0)
    ]  # fmt: skip


def test_default_recipe_is_one_adamw_group() -> None:
    model = build_classifier("resnet10t", "pda", 4)
    opt, base = make_optimizer(model, [model.head], RECIPES["default"].stage1)
    assert isinstance(opt, torch.optim.AdamW) and base == [1e-3]
    assert opt.param_groups[0]["weight_decay"] == 1e-4
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_paper_step_leaves_batchnorm_and_frozen_stages_unchanged() -> None:
    torch.manual_seed(1)
    model = build_classifier("resnet10t", "pda", 4)
    encoder = model.backbone
    freeze(model, encoder, PAPER.stage1)
    opt, _ = make_optimizer(model, [model.head], PAPER.stage1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_mode(model, encoder, PAPER.stage1)
    assert model.training and not any(
        m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d)
    )
    x = torch.rand(2, 3, 64, 64)
    loss = nn.functional.multilabel_soft_margin_loss(model(x), torch.tensor([[1.0, 0, 1, 0]] * 2))
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = model.state_dict()
    norms = tuple(f"{n}." for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d))
    bn = [k for k in before if k.startswith(norms)]  # running stats and affine parameters
    frozen = [k for k in before if k.startswith(("backbone.body.conv1", "backbone.body.layer1"))]
    assert len(bn) == 5 * len(norms) and len(frozen) > 0
    for key in set(bn) | set(frozen):
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(
        before["backbone.body.layer4.0.conv1.weight"], after["backbone.body.layer4.0.conv1.weight"]
    )
    assert not torch.equal(before["head.fc.weight"], after["head.fc.weight"])


def test_poly_schedule_per_group_is_exact() -> None:
    model = build_classifier("resnet10t", "pda", 4)
    freeze(model, model.backbone, PAPER.stage1)
    opt, base = make_optimizer(model, [model.head], PAPER.stage1)
    for step, total in ((0, 10), (3, 10), (9, 10), (10, 10)):
        schedule_lrs(opt, base, "poly", step, total)
        factor = (1 - step / total) ** 0.9
        assert [g["lr"] for g in opt.param_groups] == [0.01 * factor, 0.1 * factor]
    schedule_lrs(opt, base, "constant", 7, 10)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.1]


def test_recipe_choice_and_overrides(tmp_path: Path) -> None:
    assert resolve_recipe(None, False).name == "default"
    assert resolve_recipe(None, True).name == "paper"
    tuned = resolve_recipe("paper", True, lr=0.02, weight_decay=1e-3, head_lr_mult=5.0)
    assert (tuned.stage1.lr, tuned.stage1.weight_decay, tuned.stage1.head_lr_mult) == (
        0.02,
        1e-3,
        5.0,
    )
    assert (tuned.stage3.lr, tuned.stage3.weight_decay, tuned.stage3.head_lr_mult) == (
        0.02,
        1e-3,
        5.0,
    )
    with pytest.raises(ConfigError, match="unknown --recipe 'adam'"):
        resolve_recipe("adam", False)
    with pytest.raises(ConfigError, match="--lr must be > 0"):
        resolve_recipe(None, False, lr=0.0)

    cfg = TrainConfig(data=tmp_path, out=tmp_path / "m", pretrained="w.safetensors")
    c, s = classifier_config(cfg), segmenter_config(cfg)
    assert (c.recipe, c.optim, c.pretrained) == ("paper", PAPER.stage1, "w.safetensors")
    # per stage: the segmenter starts from scratch, so it keeps the default recipe
    assert (s.recipe, s.optim, s.pretrained) == ("default", RECIPES["default"].stage3, None)
    assert (s.vflip, s.blur, s.loss, s.val_gate) == (True, False, "ours", True)
    s = segmenter_config(replace(cfg, seg_pretrained="resnet18.a1_in1k"))
    assert (s.recipe, s.optim, s.pretrained) == ("paper", PAPER.stage3, "resnet18.a1_in1k")
    assert (s.vflip, s.blur, s.loss, s.val_gate) == (False, True, "official", False)
    mixed = TrainConfig(
        data=tmp_path, out=tmp_path / "m", recipe="paper", seg_blur=False, val_gate=True
    )
    s = segmenter_config(mixed)
    assert (s.vflip, s.blur, s.loss, s.val_gate) == (False, False, "official", True)
    s = segmenter_config(TrainConfig(data=tmp_path, out=tmp_path / "m"))
    assert (s.recipe, s.optim, s.vflip, s.blur, s.loss, s.val_gate) == (
        "default", RECIPES["default"].stage3, True, False, "ours", True
    )  # fmt: skip


def test_recipe_choice_is_said_per_stage(tmp_path: Path) -> None:
    """The log says which recipe each stage trains with and why; `paper` picked only because
    weights were given says how to choose `default` (it fails with another task's weights)."""
    cfg = TrainConfig(data=tmp_path, out=tmp_path / "m", pretrained="w.safetensors")
    assert recipe_choices(cfg) == [
        "stage 1 (classifier) recipe: paper (no --recipe and --pretrained given: made for "
        "ImageNet-like weights, it keeps every BatchNorm at the loaded statistics and the stem "
        "and layer1 fixed; for weights of a task unlike this one give --recipe default)",
        "stage 3 (segmenter) recipe: default (no --recipe and no --seg-pretrained: a random start)",
    ]
    both = replace(cfg, seg_pretrained="w.safetensors")
    assert recipe_choices(both)[1] == (
        "stage 3 (segmenter) recipe: paper (no --recipe and --seg-pretrained given: made for "
        "ImageNet-like weights, the encoder learns at a tenth of the decoder's rate; for "
        "weights of a task unlike this one give --recipe default)"
    )
    assert recipe_choices(replace(both, recipe="default")) == [
        "stage 1 (classifier) recipe: default (named by --recipe)",
        "stage 3 (segmenter) recipe: default (named by --recipe)",
    ]
    assert recipe_choices(replace(both, recipe="paper")) == [
        "stage 1 (classifier) recipe: paper (named by --recipe)",
        "stage 3 (segmenter) recipe: paper (named by --recipe)",
    ]


@pytest.mark.parametrize("name", ["official", "paper"])
def test_a_recipe_that_freezes_warns_without_pretrained_weights(tmp_path: Path, name) -> None:
    """`--recipe official` (or `paper`) without --pretrained would train stage 1 with a
    random stem and layer1 that never learn and random BatchNorm statistics: a warning line
    says so and what to give. Stage 3 of these recipes freezes nothing: no warning there."""
    cfg = TrainConfig(data=tmp_path, out=tmp_path / "m", recipe=name)
    assert recipe_choices(cfg)[:3] == [
        f"warning: --recipe {name} trains stage 1 (classifier) with stem and layer1 fixed, "
        "every BatchNorm at its initial statistics and affine parameters, made for "
        "pretrained weights, but no --pretrained is given: those parts keep their random "
        "initialisation; give --pretrained (a weights file or timm name) or --recipe default",
        f"stage 1 (classifier) recipe: {name} (named by --recipe)",
        f"stage 3 (segmenter) recipe: {name} (named by --recipe)",
    ]
    with_weights = replace(cfg, pretrained="w.safetensors")
    assert not any(line.startswith("warning:") for line in recipe_choices(with_weights))
    default = replace(cfg, recipe="default")
    assert not any(line.startswith("warning:") for line in recipe_choices(default))


def _displacement(opt: torch.optim.Optimizer, param: nn.Parameter, steps: int) -> float:
    """How far `param` moves under a constant gradient of 1 in `steps` steps."""
    start = param.detach().clone()
    for _ in range(steps):
        opt.zero_grad()
        param.grad = torch.ones_like(param)
        opt.step()
    return float((start - param.detach()).mean())


@pytest.mark.parametrize("recipe, momentum", [("official", 5e-4), ("paper", 0.9)])
def test_stage1_momentum_moves_as_the_heavy_ball_formula(recipe: str, momentum: float) -> None:
    """SGD with momentum m (dampening 0) and a constant gradient g moves, in n steps at lr,
    lr * g * sum_{t=1..n} (1 - m^t) / (1 - m): 50.025 lr for the official 5e-4, 410.46 lr
    for 0.9, 8.2x further."""
    optim = replace(RECIPES[recipe].stage1, weight_decay=0.0, lr=0.01)
    assert optim.momentum == momentum
    param = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    opt, _ = make_optimizer(nn.ParameterList([param]), [], optim)
    expected = 0.01 * sum((1 - momentum**t) / (1 - momentum) for t in range(1, 51))
    assert _displacement(opt, param, 50) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx({5e-4: 0.50025, 0.9: 4.1046}[momentum], abs=1e-4)


def test_official_stage1_optimiser_equals_the_official_call() -> None:
    """The official code's `SGD(groups, lr, weight_decay)` (5e-4 lands in the momentum slot;
    each group keeps its own weight decay) and the `official` recipe's optimiser take the same
    steps, weight decay included."""
    torch.manual_seed(0)
    model = build_classifier("resnet10t", "pda", 4)
    freeze(model, model.backbone, RECIPES["official"].stage1)
    ours, _ = make_optimizer(model, [model.head], RECIPES["official"].stage1)
    params = [p for g in ours.param_groups for p in g["params"]]
    twins = {id(p): nn.Parameter(p.detach().clone()) for p in params}
    groups = [
        {"params": [twins[id(p)] for p in g["params"]], "lr": g["lr"], "wd": g["weight_decay"]}
        for g in ours.param_groups
    ]
    assert [(g["lr"], g["wd"]) for g in groups] == [(0.01, 5e-4), (0.1, 5e-4)]
    theirs = torch.optim.SGD(
        [{"params": g["params"], "lr": g["lr"], "weight_decay": g["wd"]} for g in groups],
        0.01,
        5e-4,  # positional, as the official code: the momentum slot
    )
    assert theirs.defaults["momentum"] == 5e-4 and ours.defaults["momentum"] == 5e-4
    for step in range(5):
        for p in params:
            p.grad = torch.full_like(p, 0.1 * (step + 1))
            twins[id(p)].grad = p.grad.clone()
        ours.step()
        theirs.step()
    assert all(torch.equal(p.detach(), twins[id(p)].detach()) for p in params)
    assert RECIPES["official"].stage3 == RECIPES["paper"].stage3  # stage 3 passes momentum 0.9


def test_momentum_option_replaces_both_stages(tmp_path: Path) -> None:
    cfg = TrainConfig(data=tmp_path, out=tmp_path / "m", recipe="paper", momentum=0.5)
    assert (classifier_config(cfg).optim.momentum, segmenter_config(cfg).optim.momentum) == (
        0.5,
        0.5,
    )
    with pytest.raises(ConfigError, match=r"--momentum must be in \[0, 1\), got 1.0"):
        resolve_recipe("paper", True, momentum=1.0)
    with pytest.raises(ConfigError, match=r"--momentum must be >= 0, got -0\.1"):
        resolve_recipe("paper", True, momentum=-0.1)


def test_official_preset_sets_the_official_codes_settings(tmp_path: Path) -> None:
    """`--recipe official` alone gives the official scripts' settings in both stages."""
    cfg = TrainConfig(data=tmp_path, out=tmp_path / "m", recipe="official")
    c, s = classifier_config(cfg), segmenter_config(cfg)
    assert (c.recipe, c.batch_size, c.epochs, c.output_stride, c.pda_schedule, c.dropout) == (
        "official", 20, 20, 8, "official", 0.5
    )  # fmt: skip
    assert (c.optim.optimizer, c.optim.lr, c.optim.momentum, c.lr_schedule) == (
        "sgd", 0.01, 5e-4, "poly"
    )  # fmt: skip
    assert (s.recipe, s.batch_size, s.epochs, s.optim) == ("official", 20, 30, PAPER.stage3)
    assert (s.vflip, s.blur, s.loss, s.val_gate) == (False, True, "official", False)
    assert cfg.cam_method == "gradcam"
    assert preset_record(cfg) == {
        "recipe": "official",
        "applied": {
            "seg_epochs": 30, "batch_size": 20, "pda_schedule": "official",
            "classifier_output_stride": 8,
        },
        "overridden": {},
    }  # fmt: skip


def test_explicit_settings_win_over_the_preset(tmp_path: Path) -> None:
    cfg = TrainConfig(
        data=tmp_path, out=tmp_path / "m", recipe="official", batch_size=8,
        classifier_output_stride=16, momentum=0.9, seg_loss="ours",
    )  # fmt: skip
    c, s = classifier_config(cfg), segmenter_config(cfg)
    assert (c.batch_size, c.output_stride, c.pda_schedule, c.optim.momentum) == (
        8, 16, "official", 0.9
    )  # fmt: skip
    assert (s.batch_size, s.epochs, s.loss) == (8, 30, "ours")
    assert preset_record(cfg) == {
        "recipe": "official",
        "applied": {"seg_epochs": 30, "pda_schedule": "official"},
        "overridden": {"batch_size": 8, "classifier_output_stride": 16},
    }
    assert recipe_choices(cfg)[-1] == (
        "--recipe official preset: seg_epochs 30, pda_schedule official; given instead: "
        "batch_size 8, classifier_output_stride 16"
    )
    # a recipe without a preset keeps the project's defaults; seg_epochs follows --epochs
    plain = TrainConfig(data=tmp_path, out=tmp_path / "m", recipe="paper", epochs=7)
    c, s = classifier_config(plain), segmenter_config(plain)
    assert (c.batch_size, c.output_stride, c.pda_schedule, s.epochs) == (16, 16, "paper", 7)
    assert preset_record(plain) == {"recipe": "paper", "applied": {}, "overridden": {}}
    # the preset follows a recipe set later (nothing was filled in at construction)
    assert classifier_config(replace(plain, recipe="official")).batch_size == 20
    # the PDA schedule is the pda head's: another head takes the rest of the preset
    cam_head = classifier_config(replace(plain, recipe="official", head="cam"))
    assert (cam_head.head, cam_head.pda_schedule, cam_head.output_stride) == ("cam", "paper", 8)
