"""Tests of the built-in animals dataset and of class-folder datasets."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from sdtgen.data.animals import ANIMAL_CLASSES, AnimalsDataset, load_animals, split_indices
from sdtgen.data.folders import (
    CorruptImageError,
    ImageFolderDataset,
    adm_center_crop,
    save_class_to_idx,
    scan_images,
)

# sha256 of the sorted test indices (little-endian int64). If this changes, the split
# changed: every reported test metric would silently stop being comparable.
TEST_SPLIT_SHA256 = "bb113b292259e30fc8ccd6eb80862eab1c2a9f99de3321392d179e2d38de8273"


# --- animals ------------------------------------------------------------------------


def test_class_names():
    assert ANIMAL_CLASSES == ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")


@pytest.mark.parametrize("split, per_class", [("train", 900), ("test", 100), ("all", 1000)])
def test_split_counts_and_format(split, per_class):
    images, labels = load_animals(split)
    assert images.shape == (per_class * 10, 1, 32, 32) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == [per_class] * 10
    # Zero padding of 2 pixels around the 28x28 silhouettes; white shapes on black.
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert images[:, 0, border].max() == 0
    assert images.max() == 255
    assert images[:, 0, 14:18, 14:18].float().mean() > images.float().mean()


def test_split_is_disjoint_pinned_and_free_of_duplicates():
    train, test = split_indices("train"), split_indices("test")
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 10_000
    assert hashlib.sha256(test.astype("<i8").tobytes()).hexdigest() == TEST_SPLIT_SHA256
    assert not _digests(load_animals("train")[0]) & _digests(load_animals("test")[0])


def _digests(images: torch.Tensor) -> set[bytes]:
    return {hashlib.sha256(image.numpy().tobytes()).digest() for image in images}


def test_load_animals_returns_independent_copies():
    images, _ = load_animals("test")
    images.zero_()
    assert load_animals("test")[0].max() == 255


def test_animals_dataset_items():
    plain = AnimalsDataset("test")
    image, label = plain[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32
    assert image.min() == -1.0 and image.max() == 1.0 and isinstance(label, int)
    expected = load_animals("test")[0][0].float() / 127.5 - 1
    assert torch.equal(image, expected)


def test_animals_bad_split_message():
    with pytest.raises(ValueError, match="'train', 'test' or 'all'"):
        AnimalsDataset("validation")


# --- ADM centre crop ----------------------------------------------------------------


def test_adm_center_crop_box_halving_and_centre():
    """400x200 -> 64: BOX-halved once to 200x100, bicubic to 128x64, crop x in [32, 96).

    Original columns 100..139 (green) become 50..69 after halving, 32..44.8 after the
    0.64 resize, so 0..12.8 after the crop; columns 0..99 (red) are cropped away. The
    white 40x40 square centred at (200, 100) lands centred on the 64x64 output.
    """
    canvas = np.zeros((200, 400, 3), dtype=np.uint8)
    canvas[:, :100] = (255, 0, 0)
    canvas[:, 100:140] = (0, 255, 0)
    canvas[80:120, 180:220] = 255
    out = np.asarray(adm_center_crop(Image.fromarray(canvas), 64)).astype(int)
    assert out.shape == (64, 64, 3)
    assert out[:, :20, 0].max() < 30  # no red survives (only bicubic bleed at column 0)
    assert (out[:, :12, 1] > 225).all() and (out[:, :12, 0] < 30).all()  # green band
    assert (out[:, 15:, 1] < 30).sum() > 0 and (out[:, 16:24, 1] < 30).all()
    square = out[..., 2] > 128  # only the white square has blue
    rows, cols = np.nonzero(square)
    assert square[28:36, 28:36].all()
    assert abs(rows.mean() - 31.5) < 0.6 and abs(cols.mean() - 31.5) < 0.6


def test_adm_center_crop_no_halving_rounding():
    # 101x61 -> 32: no halving (61 < 64); resize to (round(101*32/61)=53, 32); crop x 10..42.
    image = Image.fromarray(np.full((61, 101, 3), 7, dtype=np.uint8))
    out = adm_center_crop(image, 32)
    assert out.size == (32, 32) and np.all(np.asarray(out) == 7)
    with pytest.raises(ValueError, match="positive int"):
        adm_center_crop(image, 0)


# --- class folders --------------------------------------------------------------------


def _write_folder(root, corrupt: bool = False):
    colours = {"zebra": 250, "ant": 10, "moth": 128}
    for name, value in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (48, 40), (value, value, value)).save(root / name / f"{i}.png")
    if corrupt:
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "ant" / "bad.jpg")
        data = (root / "ant" / "bad.jpg").read_bytes()
        (root / "ant" / "bad.jpg").write_bytes(data[: len(data) * 2 // 3])  # truncated JPEG
    (root / "moth" / "notes.txt").write_text("not an image")
    return colours


def test_folder_labels_and_class_to_idx(tmp_path):
    colours = _write_folder(tmp_path / "data")
    dataset = ImageFolderDataset(tmp_path / "data", image_size=16, random_flip=True)
    assert dataset.class_to_idx == {"ant": 0, "moth": 1, "zebra": 2}
    assert len(dataset) == 9
    for index in range(len(dataset)):
        image, label = dataset[index]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        expected = colours[dataset.classes[label]] / 127.5 - 1
        assert torch.allclose(image, torch.full_like(image, expected), atol=1e-6)
    path = save_class_to_idx(dataset.class_to_idx, tmp_path / "run")
    assert path.name == "class_to_idx.json"
    assert json.loads(path.read_text()) == {"ant": 0, "moth": 1, "zebra": 2}


def test_folder_missing_root_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="Image folder not found.*<class_name>"):
        ImageFolderDataset(tmp_path / "nowhere", image_size=16)
    with pytest.raises(ValueError, match="on_error"):
        ImageFolderDataset(tmp_path, image_size=16, on_error="ignore")


def test_corrupt_image_raise_names_the_file(tmp_path):
    _write_folder(tmp_path, corrupt=True)
    dataset = ImageFolderDataset(tmp_path, image_size=16)  # cheap: nothing decoded yet
    bad = [i for i, (path, _) in enumerate(dataset.samples) if path.endswith("bad.jpg")]
    with pytest.raises(CorruptImageError, match=r"bad\.jpg.*on_error='skip'"):
        dataset[bad[0]]


def test_corrupt_image_skip_uses_same_class(tmp_path):
    _write_folder(tmp_path, corrupt=True)
    dataset = ImageFolderDataset(tmp_path, image_size=16, on_error="skip")
    index = next(i for i, (path, _) in enumerate(dataset.samples) if path.endswith("bad.jpg"))
    with pytest.warns(UserWarning, match=r"bad\.jpg"):
        image, label = dataset[index]
    assert dataset.classes[label] == "ant"
    assert torch.allclose(image, torch.full_like(image, 10 / 127.5 - 1), atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each bad file is warned about once
        again, _ = dataset[index]
    assert torch.equal(again, image) and len(dataset.bad_paths) == 1


def test_scan_lists_bad_files(tmp_path):
    _write_folder(tmp_path, corrupt=True)
    dataset = ImageFolderDataset(tmp_path, image_size=16)
    bad = dataset.scan(num_workers=2)
    assert len(bad) == 1 and bad[0].endswith("bad.jpg")
    assert scan_images([tmp_path / "ant" / "0.png"]) == []


def test_training_knows_image_shapes_without_reading_images(tmp_path):
    # The trainer opens a latent cache by the config alone; its idea of the image shape must be
    # what the datasets give.
    from sdtgen.config import load_config
    from sdtgen.training.data import image_dataset, image_shape

    _write_folder(tmp_path / "data")
    for overrides in ([], [f"data.dataset={tmp_path / 'data'}", "data.image_size=16", "data.vae=identity"]):
        data = load_config(None, overrides).data
        images = image_dataset(data.dataset, data.split, data.image_size, data.on_error)
        assert image_shape(data) == tuple(images[0][0].shape)
