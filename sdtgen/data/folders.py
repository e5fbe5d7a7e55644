"""Class-per-folder image datasets (ImageNet layout) with DiT's ADM centre crop.

Layout: ``root/<class_name>/<image>.{jpg,jpeg,png,ppm,bmp,pgm,tif,tiff,webp}``; class
indices follow the sorted folder names. Listing is done by torchvision's ``ImageFolder``;
images are decoded only when read, so building the dataset stays cheap for ImageNet.

Unreadable images are handled by ``on_error``:

- ``"raise"`` (default): reading one raises :class:`CorruptImageError` naming the file.
- ``"skip"``: the image is replaced by the next readable image *of the same class* (in
  listing order, wrapping around), so the label stays right and the choice is
  deterministic; each bad path is warned about once and collected in ``bad_paths``.

:func:`scan_images` (or :meth:`ImageFolderDataset.scan`) decodes every image up front and
lists the bad ones, so they can be removed before a long run.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torchvision.datasets import ImageFolder
from tqdm.auto import tqdm

OnError = Literal["skip", "raise"]

# What PIL raises for missing, truncated, unidentifiable, malformed or oversized files.
_READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class CorruptImageError(RuntimeError):
    """An image file in a dataset could not be decoded."""


def adm_center_crop(pil_image: Image.Image, image_size: int) -> Image.Image:
    """ADM / DiT centre crop of ``pil_image`` to ``image_size`` x ``image_size``.

    While the shorter side is at least ``2 * image_size`` the image is halved with a box
    filter (cheap, alias-free downsampling); then it is resized with bicubic so that the
    shorter side is exactly ``image_size``; then the centre square is cropped (offsets
    rounded down).
    """
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
    while min(pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(side // 2 for side in pil_image.size), resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    pil_image = pil_image.resize(tuple(round(side * scale) for side in pil_image.size), resample=Image.BICUBIC)
    width, height = pil_image.size
    left, top = (width - image_size) // 2, (height - image_size) // 2
    return pil_image.crop((left, top, left + image_size, top + image_size))


def _read_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")  # convert() decodes the whole file


def _pil_to_unit_range(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def _is_bad(path: str) -> bool:
    try:
        _read_rgb(path)
    except _READ_ERRORS:
        return True
    return False


def scan_images(
    paths: Iterable[str | os.PathLike], num_workers: int | None = None, progress: bool = False
) -> list[str]:
    """Decode every image in ``paths`` and return those that fail, in the given order.

    Decoding runs in ``num_workers`` threads (default: the CPU count, at most 16); PIL
    releases the GIL while decoding, so threads give a real speed-up.
    """
    paths = [os.fspath(path) for path in paths]
    workers = num_workers or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        flags = list(
            tqdm(pool.map(_is_bad, paths), total=len(paths), disable=not progress, desc="scanning images", unit="img")
        )
    return [path for path, bad in zip(paths, flags) if bad]


def save_class_to_idx(class_to_idx: Mapping[str, int], out_dir: str | os.PathLike) -> Path:
    """Write ``class_to_idx`` as ``out_dir/class_to_idx.json`` (ordered by index)."""
    out_path = Path(out_dir) / "class_to_idx.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ordered = dict(sorted(class_to_idx.items(), key=lambda item: item[1]))
    out_path.write_text(json.dumps(ordered, indent=2) + "\n")
    return out_path


class ImageFolderDataset(ImageFolder):
    """``(image, label)`` pairs from a class-per-folder tree.

    ``image`` is an RGB float tensor (3, image_size, image_size) in [-1, 1] after
    :func:`adm_center_crop`; ``random_flip`` mirrors it horizontally with probability 1/2
    (torch's global generator, which DataLoader seeds per worker). ``classes``,
    ``class_to_idx``, ``samples`` and ``targets`` are as in torchvision's ``ImageFolder``.
    ``bad_paths`` holds the unreadable files met so far with ``on_error="skip"``; with
    DataLoader workers each worker keeps its own copy.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        random_flip: bool = False,
        on_error: OnError = "raise",
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}.")
        if not Path(root).is_dir():
            raise FileNotFoundError(
                f"Image folder not found: {root}. Expected one sub-folder of images per "
                "class, e.g. ROOT/<class_name>/<image>.jpg (the ImageNet train layout)."
            )
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}.")
        super().__init__(os.fspath(root), loader=_read_rgb)
        self.image_size = image_size
        self.random_flip = random_flip
        self.on_error = on_error
        self.bad_paths: set[str] = set()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        label = self.targets[index]
        image = adm_center_crop(self._read_or_substitute(index), self.image_size)
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return _pil_to_unit_range(image), label

    def scan(self, num_workers: int | None = None, progress: bool = False) -> list[str]:
        """Decode every image of the dataset; return the paths that fail (see scan_images)."""
        return scan_images((path for path, _ in self.samples), num_workers, progress)

    def _read_or_substitute(self, index: int) -> Image.Image:
        path = self.samples[index][0]
        try:
            return self.loader(path)
        except _READ_ERRORS as error:
            if self.on_error == "raise":
                raise CorruptImageError(
                    f"Cannot read image {path}: {error}. Delete or replace this file (the "
                    "dataset's scan() lists every unreadable file), or pass on_error='skip' "
                    "to use another image of the same class in its place."
                ) from error
            self._note_bad(path, error)
        return self._first_readable_after(index)

    def _first_readable_after(self, index: int) -> Image.Image:
        label = self.targets[index]
        members = np.flatnonzero(np.asarray(self.targets) == label)
        start = int(np.searchsorted(members, index))
        for offset in range(1, len(members)):
            path = self.samples[members[(start + offset) % len(members)]][0]
            if path in self.bad_paths:
                continue
            try:
                return self.loader(path)
            except _READ_ERRORS as error:
                self._note_bad(path, error)
        raise CorruptImageError(
            f"No readable image left in class {self.classes[label]!r} of {self.root}; "
            "fix or remove that class folder (scan() lists the unreadable files)."
        )

    def _note_bad(self, path: str, error: BaseException) -> None:
        if path in self.bad_paths:
            return
        self.bad_paths.add(path)
        warnings.warn(
            f"Skipping unreadable image {path} ({error}); another image of the same class "
            f"is used instead ({len(self.bad_paths)} skipped so far).",
            stacklevel=3,
        )
