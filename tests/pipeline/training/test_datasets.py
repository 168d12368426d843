"""The dataset reader on the real LUAD-HistoSeg sample: labels, masks and palette exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from wsi_segment.errors import DatasetError
from wsi_segment.pipeline.training.datasets import (
    MIN_TRAIN_PATCHES,
    open_dataset,
    parse_labels,
    read_image,
)
from wsi_segment.pipeline.training.train_batches import augment, batch_count, epoch_batches

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "luad-histoseg-sample"

EXPECTED_LABELS = {
    "1223954-20699-37571": (0, 0, 1, 1),
    "1223954-20699-38467": (0, 0, 1, 1),
    "1223954-20699-48323": (1, 0, 0, 1),
    "1224965-34244-45007": (0, 1, 0, 0),
    "1224965-34244-48591": (1, 0, 0, 1),
    "1224965-38724-30671": (1, 1, 0, 1),
    "1224965-39620-44111": (0, 1, 0, 0),
    "1224965-40516-36047": (1, 1, 0, 0),
    "1224965-40516-47695": (1, 0, 0, 0),
}


def test_classes_and_palette_come_from_the_dataset() -> None:
    ds = open_dataset(SAMPLE)
    assert ds.classes == ("TE", "NEC", "LYM", "TAS")
    assert ds.colors == ((205, 51, 51), (0, 255, 0), (65, 105, 225), (255, 165, 0))
    assert ds.background_color == (255, 255, 255)
    assert ds.ignore_index == 4
    assert ds.layout == "luad" and ds.background_rule
    # the Readme's names spelled out, for the trained model's class_titles
    assert ds.titles == {
        "TE": "Tumor epithelial",
        "NEC": "Necrosis",
        "LYM": "Lymphocyte",
        "TAS": "Tumor-associated stroma",
    }


def test_nine_training_patches_with_exact_labels() -> None:
    items = open_dataset(SAMPLE).train_items()
    got = {it.image.name.split("-[")[0]: it.labels for it in items}
    assert got == EXPECTED_LABELS
    img = read_image(items[0].image)
    assert img.shape == (224, 224, 3) and img.dtype == np.uint8


def test_masks_decode_to_class_indices() -> None:
    ds = open_dataset(SAMPLE)
    assert [len(ds.mask_items(s)) for s in ("val", "test")] == [3, 6]
    m = ds.read_mask(SAMPLE / "test/mask/387709-12692-44296.png")
    values, counts = np.unique(m, return_counts=True)
    assert values.tolist() == [0, 2, 3, 4]
    assert counts.tolist() == [16053, 18733, 12809, 2581]
    for item in ds.mask_items("val") + ds.mask_items("test"):
        mask = ds.read_mask(item.mask)
        assert mask.shape == (224, 224) and mask.max() <= 4


def test_rgb_mask_maps_through_the_palette(tmp_path: Path) -> None:
    ds = open_dataset(SAMPLE)
    src = SAMPLE / "val/mask/1004470-23736-36363.png"
    rgb = tmp_path / "rgb.png"
    Image.open(src).convert("RGB").save(rgb)
    assert np.array_equal(ds.read_mask(rgb), ds.read_mask(src))


def test_bcss_style_names() -> None:
    assert parse_labels("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png") == (
        1,
        1,
        0,
        1,
    )


def test_file_without_label_fails_clearly(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(SAMPLE, root)
    shutil.copy(SAMPLE / "test/img/387709-12692-44296.png", root / "train" / "no-label.png")
    with pytest.raises(DatasetError, match=r"no-label\.png: no patch label in the file name"):
        open_dataset(root).train_items()


def test_folder_without_class_description_fails(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match="cannot tell the classes"):
        open_dataset(tmp_path)


def test_a_reserved_class_name_is_refused_before_training(tmp_path: Path) -> None:
    """A dataset class named like an output's reserved name (`Tissue`, `Unclassified`) would
    only be refused when the trained model is saved: refused when the dataset opens."""
    (tmp_path / "train").mkdir()
    doc = '{"classes": ["Tumour", "Tissue"], "colors": [[255, 0, 0], [0, 255, 0]]}'
    (tmp_path / "dataset.json").write_text(doc)
    with pytest.raises(DatasetError, match=r"class name 'Tissue' is reserved.*rename"):
        open_dataset(tmp_path)


def test_bcss_layout_classes_from_readme(tmp_path: Path) -> None:
    root = tmp_path / "bcss"
    shutil.copytree(SAMPLE, root)
    for i, f in enumerate(sorted((root / "train").glob("*.png"))):
        packed = "".join(str(v) for v in parse_labels(f))
        f.rename(f.with_name(f"TCGA-A1-A0SK-DX1_xmin{i}_ymin0_MPP-0.2500+{i}[{packed}].png"))
    (root / "Readme.txt").write_text(
        "- [a: Tumor (TUM), b: Stroma (STR), c: Lymphocytic infiltrate (LYM), d: Necrosis (NEC)]\n"
    )
    ds = open_dataset(root)
    assert ds.classes == ("TUM", "STR", "LYM", "NEC")
    assert ds.layout == "bcss" and not ds.background_rule
    assert ds.titles["LYM"] == "Lymphocytic infiltrate"  # kept through the layout's change
    assert ds.colors[0] == (205, 51, 51)  # the palette of the masks on disk wins
    assert sorted(it.labels for it in ds.train_items()) == sorted(EXPECTED_LABELS.values())


@pytest.mark.parametrize(
    ("n", "batch_size", "sizes"),
    [
        (9, 4, [4, 5]),  # the real sample's 9 patches: a last batch of one joins the one before
        (8, 4, [4, 4]),
        (10, 4, [4, 4, 2]),
        (3, 4, [3]),
        (5, 2, [2, 3]),
        (2, 16, [2]),
    ],
)
def test_no_training_batch_holds_one_sample(n: int, batch_size: int, sizes: list[int]) -> None:
    for epoch in range(3):
        batches = epoch_batches(n, batch_size, torch.Generator().manual_seed(epoch))
        assert [len(b) for b in batches] == sizes
        assert sorted(i for b in batches for i in b) == list(range(n))  # every sample, once
    assert batch_count(n, batch_size) == len(sizes)


def test_training_needs_two_patches(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    shutil.copytree(SAMPLE, root)
    for f in sorted((root / "train").glob("*.png"))[1:]:
        f.unlink()
    ds = open_dataset(root)
    assert len(ds.train_items()) == 1  # pseudo masks can still be made of it
    with pytest.raises(DatasetError, match=r"train: training needs at least 2 patches, found 1"):
        ds.train_items(MIN_TRAIN_PATCHES)


def test_augment_is_h_and_v_flips_of_image_and_masks_alike() -> None:
    """Our augmentation on purpose (docs/training.md): flips only, no blur, masks follow."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=gen)
    masks = [images[:, 0].clone(), images[:, 1].clone()]
    out, out_masks = augment(images, masks, torch.Generator().manual_seed(1))
    seen = set()
    for i in range(64):
        flips = {
            (h, v): images[i].flip([d for d, on in ((2, h), (1, v)) if on]) if h or v else images[i]
            for h in (False, True)
            for v in (False, True)
        }
        match = [k for k, f in flips.items() if torch.equal(out[i], f)]
        assert len(match) == 1  # exactly one of the four flips, pixel for pixel: no blur
        seen.add(match[0])
        assert torch.equal(out_masks[0][i], out[i, 0]) and torch.equal(out_masks[1][i], out[i, 1])
    assert seen == {(False, False), (False, True), (True, False), (True, True)}


def test_augment_without_vflip_and_with_blur() -> None:
    """The official stage 3: horizontal flips only, and PIL's Gaussian blur (p 0.5, radius
    U(0, 1)) drawn after every other draw, so flips and crops stay those of a run without it."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (32, 3, 12, 12), dtype=torch.uint8, generator=gen)
    masks = [images[:, 0].clone()]
    plain, plain_masks = augment(images, masks, torch.Generator().manual_seed(2), 8, vflip=False)
    mirrored = 0
    for i in range(32):
        as_is, mirror = _is_crop(images[i], plain[i]), _is_crop(images[i], plain[i].flip(2))
        assert as_is or mirror  # no vertical flip: a crop of the image or of its mirror
        mirrored += mirror and not as_is
        assert torch.equal(plain_masks[0][i], plain[i, 0])
    assert 0 < mirrored < 32
    blur_gen = torch.Generator().manual_seed(2)
    blurred, blurred_masks = augment(images, masks, blur_gen, 8, vflip=False, blur=True)
    assert torch.equal(blurred_masks[0], plain_masks[0])  # same flips and crop as without blur
    # the blur draws, replayed: (u, radius) per image after the flips and the crop offsets
    replay = torch.Generator().manual_seed(2)
    torch.rand(32, 2, generator=replay)
    torch.randint(0, 5, (1,), generator=replay), torch.randint(0, 5, (1,), generator=replay)
    draws = torch.rand(32, 2, generator=replay, dtype=torch.float64).tolist()
    assert 0 < sum(u < 0.5 for u, _ in draws) < 32
    for i, (u, radius) in enumerate(draws):
        if u < 0.5:
            pil = Image.fromarray(plain[i].permute(1, 2, 0).numpy())
            want = torch.from_numpy(
                np.asarray(pil.filter(ImageFilter.GaussianBlur(radius=radius))).copy()
            ).permute(2, 0, 1)
            assert torch.equal(blurred[i], want)
        else:
            assert torch.equal(blurred[i], plain[i])


def _is_crop(image: torch.Tensor, crop: torch.Tensor) -> bool:
    size = crop.shape[-1]
    return any(
        torch.equal(image[:, y : y + size, x : x + size], crop)
        for y in range(image.shape[1] - size + 1)
        for x in range(image.shape[2] - size + 1)
    )


def test_bad_masks_are_one_dataset_error_naming_the_mask(tmp_path: Path) -> None:
    """A truncated first mask (read for the palette) and a mask of another size than its
    image were tracebacks, in `evaluate` and in training's stage-3 validation (after stages
    1 and 2)."""
    root = tmp_path / "ds"
    shutil.copytree(SAMPLE, root)
    first = sorted((root / "val" / "mask").glob("*.png"))[0]
    whole = first.read_bytes()
    first.write_bytes(whole[:100])
    with pytest.raises(DatasetError, match=rf"{first.name}: cannot read mask"):
        open_dataset(root)
    first.write_bytes(whole)
    with Image.open(first) as im:
        im.resize((200, 200)).save(first)
    with pytest.raises(DatasetError) as err:
        open_dataset(root).mask_items("val")
    assert str(err.value).startswith(f"{first}: the mask is 200x200 px but its image")


def test_a_dataset_of_val_and_test_only_opens_for_evaluation(tmp_path: Path) -> None:
    """`evaluate` needs no training patches: "no train/ folder" refused it."""
    root = tmp_path / "ds"
    shutil.copytree(SAMPLE, root, ignore=shutil.ignore_patterns("train"))
    ds = open_dataset(root)
    assert ds.layout == "luad" and len(ds.mask_items("test")) == len(
        list((SAMPLE / "test" / "img").glob("*.png"))
    )
    with pytest.raises(DatasetError, match="no train/ folder"):
        ds.train_items()
