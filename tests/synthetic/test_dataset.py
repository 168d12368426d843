"""The synthetic dataset: same layout as LUAD-HistoSeg, exact masks, reproducible from a seed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from wsi_segment.pipeline.training.datasets import open_dataset, read_image
from wsi_segment.synthetic.dataset import (
    SyntheticSpec,
    make_synthetic_dataset,
    random_label_map,
)

SPEC = SyntheticSpec(n_train=6, n_val=2, n_test=3, size=64, seed=3)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def test_layout_labels_and_masks(tmp_path: Path) -> None:
    ds = open_dataset(make_synthetic_dataset(tmp_path / "a", SPEC))
    assert ds.classes == ("TE", "NEC", "LYM", "TAS") and ds.ignore_index == 4
    train = ds.train_items()
    assert len(train) == 6 and all(1 <= sum(it.labels) <= 3 for it in train)
    assert [len(ds.mask_items(s)) for s in ("val", "test")] == [2, 3]
    for item in ds.mask_items("test"):
        mask, img = ds.read_mask(item.mask), read_image(item.image)
        assert mask.shape == img.shape[:2] == (64, 64)
        assert (img[mask == 4] == 255).all()  # background is exactly the white pixels
        assert not (img[mask < 4] == 255).all(-1).any()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = _digest(make_synthetic_dataset(tmp_path / "a", SPEC))
    b = _digest(make_synthetic_dataset(tmp_path / "b", SPEC))
    c = _digest(make_synthetic_dataset(tmp_path / "c", SyntheticSpec(6, 2, 3, 64, seed=4)))
    assert a == b
    assert a != c


def test_label_map_classes() -> None:
    labels = random_label_map(96, np.random.default_rng(0), background_prob=1.0)
    values = set(np.unique(labels).tolist())
    assert 255 in values and 1 <= len(values - {255}) <= 3 and values - {255} <= {0, 1, 2, 3}


def test_command_line_options_and_help(tmp_path, capsys):
    """`--help` prints usage and writes nothing (it used to write a folder named --help)."""
    import pytest

    from wsi_segment.synthetic.dataset import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--n-train" in capsys.readouterr().out
    main([str(tmp_path / "ds"), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--size", "48"])
    assert len(list((tmp_path / "ds" / "train").glob("*.png"))) == 2
    assert len(list((tmp_path / "ds" / "test" / "mask").glob("*.png"))) == 1
