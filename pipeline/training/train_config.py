"""Settings of `wsi-segment train` and how they map onto each training stage.

One place for the mapping, shared by `pipeline.training.train` (all stages in one call) and
`pipeline.training.train_stages` (one stage per Prefect task), so the two can never drift apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from wsi_segment.errors import ConfigError
from wsi_segment.models.cam_methods import (
    CAM_METHODS,
    DEFAULT_CAM_METHOD,
    check_head,
    pseudo_mask_methods,
)
from wsi_segment.models.heads import DEFAULT_DROPOUT
from wsi_segment.models.pretrained import is_file_source
from wsi_segment.models.segmenter import SEG_LOSSES
from wsi_segment.pipeline.training.make_pseudo_masks import check_pseudo_mask_folder
from wsi_segment.pipeline.training.recipes import (
    PROJECT_DEFAULTS,
    RECIPES,
    Preset,
    Recipe,
    frozen_description,
    resolve_recipe,
)
from wsi_segment.pipeline.training.train_classifier import ClassifierConfig, head_spec
from wsi_segment.pipeline.training.train_segmenter import CHECKPOINT, SegmenterConfig
from wsi_segment.pipeline.training.warm_start import check_start
from wsi_segment.wsi.mpp import mpp_problem


@dataclass(frozen=True)
class TrainConfig:
    """Everything `wsi-segment train` sets; `max_steps` caps batches per epoch (smoke tests)."""

    data: Path
    out: Path
    # seg_epochs, batch_size, pda_schedule, classifier_output_stride: None takes the recipe's
    # preset, else PROJECT_DEFAULTS (seg_epochs: the same as `epochs`); `settings` resolves them
    epochs: int = 20
    seg_epochs: int | None = None
    encoder: str = "resnet18"
    seg_encoder: str | None = None  # None: the same as `encoder`
    batch_size: int | None = None
    head: str = "pda"
    dropout: float = DEFAULT_DROPOUT
    pda_schedule: str | None = None
    pda_sigma: float | None = None
    pda_floor: float | None = None
    pda_warmup: int | None = None
    classifier_output_stride: int | None = None
    cam_method: str = DEFAULT_CAM_METHOD  # stage 2: a name of models.cam_methods.CAM_METHODS
    lr_schedule: str = "poly"
    device: str = "auto"
    # recipe (None: paper when an encoder starts from pretrained weights, else default) and
    # what replaces its settings; None keeps the recipe's
    recipe: str | None = None
    pretrained: str | None = None  # classifier encoder: weights file or timm name
    seg_pretrained: str | None = None  # segmenter encoder: weights file or timm name
    lr: float | None = None
    weight_decay: float | None = None
    bias_lr_mult: float | None = None
    head_lr_mult: float | None = None
    bias_weight_decay: bool | None = None
    momentum: float | None = None  # SGD's, both stages
    seg_vflip: bool | None = None
    seg_blur: bool | None = None
    seg_loss: str | None = None
    val_gate: bool | None = None
    crop: int | None = None
    seed: int = 0
    work_dir: Path | None = None
    name: str | None = None
    fp16: bool = False
    mpp: float = 1.0
    tile_size: int = 224
    decoder_channels: int = 256
    max_steps: int | None = None
    threads: int | None = None
    provenance: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        # One rule for both doors (`wsi-segment train` and the Prefect train flow): the
        # segmenter follows the classifier's encoder unless told otherwise.
        if self.seg_encoder is None:
            object.__setattr__(self, "seg_encoder", self.encoder)

    @property
    def settings(self) -> Settings:
        """The preset-able settings as they run: given > the recipe's preset > the default."""
        preset = recipe_preset(self)

        def pick(name: str) -> Any:
            for source in (self, preset, PROJECT_DEFAULTS):
                if getattr(source, name) is not None:
                    return getattr(source, name)
            return self.epochs  # seg_epochs, given by nobody

        return Settings(**{name: pick(name) for name in Settings.__dataclass_fields__})

    @property
    def segmenter_epochs(self) -> int:
        """The stage-3 epochs as they run (given, the preset's, else `epochs`)."""
        return self.settings.seg_epochs

    @property
    def segmenter_encoder(self) -> str:
        """`seg_encoder`, never None once constructed."""
        return self.encoder if self.seg_encoder is None else self.seg_encoder


@dataclass(frozen=True)
class Settings:
    """`Preset`'s fields resolved for one TrainConfig (`TrainConfig.settings`)."""

    seg_epochs: int
    batch_size: int
    pda_schedule: str
    classifier_output_stride: int


def recipe_preset(cfg: TrainConfig) -> Preset:
    """The named recipe's preset, less its PDA schedule for a head without PDA."""
    preset = RECIPES[cfg.recipe].preset if cfg.recipe in RECIPES else Preset()
    return preset if cfg.head == "pda" else replace(preset, pda_schedule=None)


def preset_record(cfg: TrainConfig) -> dict[str, Any]:
    """What model.json says of the preset: the recipe named, the settings its preset gave,
    and those the user gave instead of the preset's."""
    preset = recipe_preset(cfg)
    named = {k: v for k, v in asdict(preset).items() if v is not None}
    return {
        "recipe": cfg.recipe,
        "applied": {k: v for k, v in named.items() if getattr(cfg, k) is None},
        "overridden": {k: getattr(cfg, k) for k in named if getattr(cfg, k) is not None},
    }


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings no stage can run with, before anything is written."""
    if cfg.epochs < 1 or cfg.segmenter_epochs < 1:
        raise ConfigError("--epochs and --seg-epochs must be >= 1")
    if cfg.settings.batch_size < 2:
        raise ConfigError(
            f"--batch-size must be >= 2, got {cfg.settings.batch_size}: BatchNorm cannot train on "
            "batches of one sample"
        )
    problem = mpp_problem(cfg.mpp)
    if problem is not None:  # model.json would record it, and every slide be resampled to it
        raise ConfigError(f"--mpp {problem}; give the patches' pixel size (1.0 = 10x)")
    _check_sizes(cfg)
    if cfg.out.exists() and not cfg.out.is_dir():  # found only when the model is saved
        raise ConfigError(f"{cfg.out}: --out is a file; give a folder for the model")
    head_spec(classifier_config(cfg))  # dropout and PDA schedule
    if cfg.cam_method in CAM_METHODS and cfg.cam_method not in pseudo_mask_methods():
        raise ConfigError(
            f"--cam-method {cfg.cam_method} gives one class-agnostic map (the same for every "
            f"class), so it cannot tell classes apart in pseudo masks; pick one of "
            f"{list(pseudo_mask_methods())} (it stays available for heat maps)"
        )
    if cfg.cam_method not in pseudo_mask_methods():
        raise ConfigError(
            f"--cam-method must be one of {list(pseudo_mask_methods())}, got {cfg.cam_method!r}"
        )
    check_head(cfg.cam_method, cfg.head)
    check_pseudo_mask_folder(pseudo_mask_dir(cfg), cfg.cam_method)
    for option, source in (
        ("--pretrained", cfg.pretrained),
        ("--seg-pretrained", cfg.seg_pretrained),
    ):
        if (
            source is not None
            and is_file_source(source)
            and not Path(source).expanduser().is_file()
        ):
            raise ConfigError(f"{source}: {option} weights file not found; check the path")
    # a stage resumed from a checkpoint that started otherwise: refused now, not after stage 1
    stage1, stage3 = work_dir(cfg) / "stage1", work_dir(cfg) / "stage3"
    check_start(cfg.pretrained, stage1, "classifier encoder", stage1)
    check_start(cfg.seg_pretrained, stage3, "segmenter encoder", stage3 / CHECKPOINT)
    recipe(cfg, cfg.pretrained)  # a recipe name or setting out of range
    if cfg.seg_loss is not None and cfg.seg_loss not in SEG_LOSSES:
        raise ConfigError(f"--seg-loss must be one of {sorted(SEG_LOSSES)}, got {cfg.seg_loss!r}")


def _check_sizes(cfg: TrainConfig) -> None:
    """Sizes a stage would fail on only once it runs (stage 3 after hours of stages 1-2)."""
    if cfg.crop is not None and (cfg.crop < 16 or cfg.crop % 16):
        raise ConfigError(
            f"--crop must be a multiple of 16 px (DeepLabV3+'s output stride), >= 16, got "
            f"{cfg.crop}; or leave it out to train on whole patches"
        )
    if cfg.decoder_channels < 1:
        raise ConfigError(f"--decoder-channels must be >= 1, got {cfg.decoder_channels}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {cfg.threads}")


def recipe(cfg: TrainConfig, pretrained: str | None) -> Recipe:
    """The named recipe with the settings `cfg` replaces; without a name, per stage: `paper`
    where that stage's encoder starts from `pretrained` weights, else `default` (freezing a
    randomly initialised stem would only hurt)."""
    return resolve_recipe(
        cfg.recipe,
        pretrained is not None,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        bias_lr_mult=cfg.bias_lr_mult,
        head_lr_mult=cfg.head_lr_mult,
        bias_weight_decay=cfg.bias_weight_decay,
        momentum=cfg.momentum,
    )


_PAPER_STAGE1 = (
    "made for ImageNet-like weights, it keeps every BatchNorm at the loaded statistics and "
    "the stem and layer1 fixed"
)
_PAPER_STAGE3 = (
    "made for ImageNet-like weights, the encoder learns at a tenth of the decoder's rate"
)


def recipe_choices(cfg: TrainConfig) -> list[str]:
    """One log line per stage: the recipe it trains with and why. `paper`, picked only because
    weights were given, fails with weights of a task unlike this one (stage 1 keeps their
    BatchNorm statistics; docs/training.md), so that line says how to choose otherwise."""
    lines = []
    for stage, option, source, made_for, first in (
        ("stage 1 (classifier)", "--pretrained", cfg.pretrained, _PAPER_STAGE1, True),
        ("stage 3 (segmenter)", "--seg-pretrained", cfg.seg_pretrained, _PAPER_STAGE3, False),
    ):
        chosen = recipe(cfg, source)
        frozen = frozen_description(chosen.stage1 if first else chosen.stage3)
        if cfg.recipe is not None and source is None and frozen:
            lines.append(
                f"warning: --recipe {chosen.name} trains {stage} with {frozen}, made for "
                f"pretrained weights, but no {option} is given: those parts keep their random "
                f"initialisation; give {option} (a weights file or timm name) or --recipe default"
            )
        if cfg.recipe is not None:
            why = "named by --recipe"
        elif source is None:
            why = f"no --recipe and no {option}: a random start"
        else:
            why = (
                f"no --recipe and {option} given: {made_for}; for weights of a task unlike "
                "this one give --recipe default"
            )
        lines.append(f"{stage} recipe: {chosen.name} ({why})")
    record = preset_record(cfg)
    if record["applied"] or record["overridden"]:
        applied = ", ".join(f"{k} {v}" for k, v in record["applied"].items()) or "nothing"
        given = ", ".join(f"{k} {v}" for k, v in record["overridden"].items())
        lines.append(
            f"--recipe {cfg.recipe} preset: {applied}"
            + (f"; given instead: {given}" if given else "")
        )
    return lines


def _pick(value: bool | str | None, default: bool | str) -> Any:
    return default if value is None else value


def seg_encoder_name(name: str) -> str:
    """smp has its own resnet18/34/50; any other timm name goes through smp's `tu-` bridge."""
    smp_own = {"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"}
    return name if name in smp_own or name.startswith("tu-") else f"tu-{name}"


def work_dir(cfg: TrainConfig) -> Path:
    """The folder holding checkpoints and pseudo masks (as `train()` chooses it)."""
    return cfg.work_dir or cfg.out.with_name(cfg.out.name + ".work")


def pseudo_mask_dir(cfg: TrainConfig) -> Path:
    """The stage-2 folder (one subfolder per depth, and method.json)."""
    return work_dir(cfg) / "pseudo_masks"


def classifier_config(cfg: TrainConfig) -> ClassifierConfig:
    settings = cfg.settings
    return ClassifierConfig(
        encoder=cfg.encoder,
        head=cfg.head,
        output_stride=settings.classifier_output_stride,
        dropout=cfg.dropout,
        pda_schedule=settings.pda_schedule,
        pda_sigma=cfg.pda_sigma,
        pda_floor=cfg.pda_floor,
        pda_warmup=cfg.pda_warmup,
        epochs=cfg.epochs,
        batch_size=settings.batch_size,
        optim=recipe(cfg, cfg.pretrained).stage1,
        recipe=recipe(cfg, cfg.pretrained).name,
        pretrained=cfg.pretrained,
        lr_schedule=cfg.lr_schedule,
        seed=cfg.seed,
        max_steps=cfg.max_steps,
    )


def segmenter_config(cfg: TrainConfig) -> SegmenterConfig:
    rec = recipe(cfg, cfg.seg_pretrained)
    return SegmenterConfig(
        encoder=seg_encoder_name(cfg.segmenter_encoder),
        epochs=cfg.segmenter_epochs,
        batch_size=cfg.settings.batch_size,
        optim=rec.stage3,
        recipe=rec.name,
        pretrained=cfg.seg_pretrained,
        vflip=_pick(cfg.seg_vflip, rec.seg_vflip),
        blur=_pick(cfg.seg_blur, rec.seg_blur),
        loss=_pick(cfg.seg_loss, rec.seg_loss),
        val_gate=_pick(cfg.val_gate, rec.val_gate),
        lr_schedule=cfg.lr_schedule,
        seed=cfg.seed,
        crop=cfg.crop,
        decoder_channels=cfg.decoder_channels,
        max_steps=cfg.max_steps,
    )
