"""The built-in dataset: 10,000 animal silhouettes from ``animal-shape-mnist==0.39``.

The images ship inside that PyPI package as two gzip pickles. We read the files directly
because the package's own loader imports TensorFlow. Images are white silhouettes on a
black background, uint8 0..255, 28x28; we zero-pad them to 32x32 so that they tile into
2x2 patches after a factor-2 VAE.

The train/test split (900/100 per class) is a pure function of the image pixels, so it
never changes between sdtgen versions, numpy versions or file orderings; see
:func:`split_indices`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import pickle
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

# Label order of the package's label file (verified by looking at each class's images).
ANIMAL_CLASSES: tuple[str, ...] = (
    "bear",
    "bird",
    "cat",
    "cow",
    "dog",
    "elephant",
    "giraffe",
    "horse",
    "sheep",
    "zebra",
)
IMAGE_SIZE = 32
TEST_PER_CLASS = 100
PER_CLASS = 1000

Split = Literal["train", "test", "all"]

_PACKAGE = "animal_shape_mnist"
_INSTALL_HINT = "Reinstall it with `pip install --force-reinstall animal-shape-mnist==0.39`."
_FILES = {
    # file name -> sha256 of the file as shipped in animal-shape-mnist 0.39. Checking it
    # before unpickling catches corrupt or different data (and a different split) early.
    "images": ("animal_data_version_3.gz", "68a30346781a0984f839463a4615d2decb899d1ce65091bb92586311754a34ce"),
    "labels": ("animal_label_version_3.gz", "dec8dba7c469830989fbab46825021a08a38470753a512f27ada847eced97b57"),
}
# Salt of the split ranking; changing it changes the split, which the tests pin.
_SPLIT_SALT = b"sdtgen-animals-split-v1"


def _data_dir() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The built-in dataset needs the package animal-shape-mnist, which is not "
            "installed. Install it with `pip install animal-shape-mnist==0.39`."
        )
    # A namespace package: its files live under its (single) search location.
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "Animal Shape"


def _read_verified_pickle(path: Path, sha256: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"Animal dataset file is missing: {path}. {_INSTALL_HINT}")
    raw = path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(
            f"Animal dataset file {path} is corrupt or not the one shipped with "
            f"animal-shape-mnist 0.39 (sha256 mismatch). {_INSTALL_HINT}"
        )
    return np.asarray(pickle.loads(gzip.decompress(raw)))


@functools.lru_cache(maxsize=1)
def _load_raw() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 images (N, 28, 28) uint8 and labels (N,) int64, in file order."""
    folder = _data_dir()
    images = _read_verified_pickle(folder / _FILES["images"][0], _FILES["images"][1])
    labels = _read_verified_pickle(folder / _FILES["labels"][0], _FILES["labels"][1])
    counts = np.bincount(labels.astype(np.int64), minlength=len(ANIMAL_CLASSES))
    if (
        images.shape != (PER_CLASS * len(ANIMAL_CLASSES), 28, 28)
        or images.dtype != np.uint8
        or labels.shape != (images.shape[0],)
        or (counts != PER_CLASS).any()
    ):
        raise ValueError(
            f"Animal dataset files in {folder} have unexpected contents (images "
            f"{images.shape} {images.dtype}, label counts {counts.tolist()}). {_INSTALL_HINT}"
        )
    return images, labels.astype(np.int64)


def _test_indices_of_class(images: np.ndarray, members: np.ndarray) -> list[int]:
    """Pick TEST_PER_CLASS of ``members`` (indices of one class) for the test split.

    Identical images are grouped and kept on one side of the split, so that no test image
    has an exact copy in train (the package holds a few hundred duplicate pairs). Groups
    are ranked by a salted hash of their pixels and taken in that order while they fit.
    """
    groups: dict[bytes, list[int]] = {}
    for index in members:
        groups.setdefault(hashlib.sha256(images[index].tobytes()).digest(), []).append(int(index))
    ranked = sorted(groups.items(), key=lambda item: hashlib.sha256(_SPLIT_SALT + item[0]).digest())
    chosen: list[int] = []
    for _, group in ranked:
        if len(chosen) + len(group) <= TEST_PER_CLASS:
            chosen.extend(group)
        if len(chosen) == TEST_PER_CLASS:
            return chosen
    raise AssertionError("too few distinct images in a class to fill the test split")


@functools.cache
def split_indices(split: Split) -> np.ndarray:
    """Sorted indices (into the package's file order) of the images in ``split``.

    Rule: per class, 100 test images chosen by ranking groups of identical images by a
    salted sha256 of their pixels (see ``_test_indices_of_class``); the other 900 are train.
    """
    _check_split(split)
    images, labels = _load_raw()
    test = np.zeros(len(labels), dtype=bool)
    for label in range(len(ANIMAL_CLASSES)):
        test[_test_indices_of_class(images, np.flatnonzero(labels == label))] = True
    chosen = {"all": np.ones_like(test), "test": test, "train": ~test}[split]
    indices = np.flatnonzero(chosen)
    indices.flags.writeable = False  # cached and shared between callers
    return indices


@functools.cache
def _load_split(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = _load_raw()
    index = split_indices(split)
    padding = (IMAGE_SIZE - 28) // 2
    padded = np.pad(images[index], ((0, 0), (padding, padding), (padding, padding)))
    return torch.from_numpy(padded[:, None]), torch.from_numpy(labels[index])


def load_animals(split: Split = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 32, 32) uint8 in 0..255 (white on black) and labels (N,) int64.

    N is 9,000 for "train", 1,000 for "test" and 10,000 for "all". The decoded split is
    cached in memory; each call returns fresh copies, so callers may modify them.
    """
    images, labels = _load_split(split)
    return images.clone(), labels.clone()


def _check_split(split: str) -> None:
    if split not in ("train", "test", "all"):
        raise ValueError(f"Unknown animals split {split!r}; use 'train', 'test' or 'all'.")


class AnimalsDataset(Dataset):
    """The built-in animal silhouettes as ``(image, label)`` pairs.

    ``image`` is a float tensor (1, 32, 32) in [-1, 1]; ``label`` an int index into
    :data:`ANIMAL_CLASSES`. Items are never flipped: training mirrors them by its own
    seeded keys (training/randomness.py), so a sample's flip is a function of the step.
    """

    classes = ANIMAL_CLASSES
    class_to_idx = {name: index for index, name in enumerate(ANIMAL_CLASSES)}

    def __init__(self, split: Split = "train") -> None:
        _check_split(split)
        self.split = split
        # Shared, read-only use of the cached tensors: __getitem__ never writes into them.
        self.images, self.labels = _load_split(split)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float() / 127.5 - 1.0, int(self.labels[index])
