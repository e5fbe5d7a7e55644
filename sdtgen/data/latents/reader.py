"""Reading a latent cache: open it by its manifest (cheap), or verify every byte of it (explicit)."""

from __future__ import annotations

import bisect
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sdtgen.data.animals import AnimalsDataset
from sdtgen.data.folders import ImageFolderDataset
from sdtgen.data.latents.format import (
    NUMPY_DTYPES,
    RERUN_HINT,
    LatentCacheError,
    check_shard,
    check_shard_records,
    dataset_fingerprint,
    file_sha256,
    read_manifest,
)
from sdtgen.vae import sample_posterior, standard_normal


def read_complete_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a cache whose extraction finished; :class:`LatentCacheError` otherwise."""
    manifest = read_manifest(cache_dir)
    if not manifest.get("complete"):
        raise LatentCacheError(f"The latent cache {cache_dir} is incomplete (extraction did not finish); {RERUN_HINT}.")
    check_shard_records(manifest)
    return manifest


class LatentDataset(Dataset):
    """A latent cache as a dataset: ``ds[i]`` or ``ds[i, flip]`` -> ``(mean, logvar, label)``.

    ``mean`` and ``logvar`` are float32 tensors (C, h, w), unscaled, of image ``i`` as is
    (``flip`` false; a plain int key) or mirrored (``flip`` true); ``label`` is an int.
    Reading is deterministic: the caller draws the flip bit and the posterior sample
    (:meth:`draw_latents`) with its own generator. Opening reads the manifest and each
    shard's safetensors header, and checks them against each other (tensors, shapes,
    counts, file size): the cost grows with the number of shards, not of images, and no
    data is read or hashed (:func:`verify_cache` does that). Shards are memory-mapped,
    not loaded.
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_complete_manifest(self.cache_dir)
        self._open_shards()

    def _open_shards(self) -> None:
        self._starts = [shard["start"] for shard in self.manifest["shards"]]
        self._arrays = [self._map_shard(shard) for shard in self.manifest["shards"]]

    def _map_shard(self, shard: dict[str, Any]) -> dict[str, np.ndarray]:
        """Views into one read-only memory map of the whole shard file (one file handle each)."""
        path = self.cache_dir / shard["file"]
        try:
            header, data_start = check_shard(path, shard, self.manifest)
        except LatentCacheError as error:
            raise LatentCacheError(
                f"Latent cache shard {path} is damaged: {error}. Delete it and {RERUN_HINT}."
            ) from None
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        arrays = {}
        for key, entry in header.items():
            begin, end = entry["data_offsets"]
            flat = raw[data_start + begin : data_start + end].view(NUMPY_DTYPES[entry["dtype"]])
            arrays[key] = flat.reshape(entry["shape"])
        return arrays

    # Pickling (DataLoader workers under "spawn") must not copy the mapped data: send the
    # manifest and map the files again on the other side.
    def __getstate__(self) -> dict[str, Any]:
        return {"cache_dir": self.cache_dir, "manifest": self.manifest}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.cache_dir, self.manifest = state["cache_dir"], state["manifest"]
        self._open_shards()

    def __len__(self) -> int:
        return self.manifest["num_samples"]

    def __getitem__(self, key: int | tuple[int, bool]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, flip = key if isinstance(key, tuple) else (key, False)
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a latent cache of {len(self)} images")
        index %= len(self)
        shard = bisect.bisect_right(self._starts, index) - 1
        arrays, row = self._arrays[shard], index - self._starts[shard]
        suffix = "_flip" if flip else ""
        # np.array copies out of the read-only map into fresh float32 memory.
        mean = torch.from_numpy(np.array(arrays["mean" + suffix][row], dtype=np.float32))
        logvar = torch.from_numpy(np.array(arrays["logvar" + suffix][row], dtype=np.float32))
        return mean, logvar, int(arrays["labels"][row])

    @property
    def class_names(self) -> list[str]:
        """Class names in label order."""
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are 0 .. num_classes - 1)."""
        return len(self.manifest["class_names"])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent."""
        return tuple(self.manifest["latent_shape"])

    @property
    def vae_description(self) -> dict[str, Any]:
        """The VAE's ``describe()`` (plus its weights' sha256) at extraction time."""
        return dict(self.manifest["vae"])

    @property
    def scale(self) -> float:
        """The VAE's latent scale: the model sees ``(z - shift) * scale``."""
        return float(self.manifest["scale"])

    @property
    def shift(self) -> float:
        """The VAE's latent shift (see :attr:`scale`)."""
        return float(self.manifest["shift"])

    def draw_latents(
        self, mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled latents ``(z - shift) * scale`` with ``z ~ N(mean, exp(logvar))``.

        The same draw as :meth:`LatentVAE.sample_latent` of the VAE that made the cache
        (both call :func:`sdtgen.vae.sample_posterior`): noise from ``generator``, none for
        the identity VAE.
        """
        noise = None if self.manifest["vae"]["type"] == "identity" else standard_normal(mean, generator)
        return sample_posterior(mean, logvar, noise, scale=self.scale, shift=self.shift)


def recorded_dataset(manifest: dict[str, Any]) -> tuple[Dataset | None, str]:
    """The dataset a manifest was extracted from, rebuilt here if possible, and what it is.

    The built-in set's split, or the image folder if it still exists at the recorded root;
    None (with the reason) for a folder that is gone and for a Subset, whose indices the
    manifest does not keep.
    """
    record = manifest["dataset"]
    if record.get("subset"):
        return None, "a subset of a dataset, which cannot be rebuilt from the manifest"
    if record["kind"] == "animals":
        return AnimalsDataset(record["split"]), f"the animals {record['split']} split"
    root = Path(record["root"])
    if not root.is_dir():
        return None, f"the image folder {root} is not there"
    return ImageFolderDataset(root, record["image_size"]), f"the image folder {root}"


def verify_cache(cache_dir: str | os.PathLike, dataset: Dataset | None = None) -> str:
    """Check every byte of a complete cache, and that its dataset is unchanged; return a summary.

    Every shard's header is checked against the manifest and its sha256 against the one
    recorded at extraction. ``dataset`` (default: the one the manifest records, where it
    can be rebuilt, see :func:`recorded_dataset`) is fingerprinted again and compared.
    Raises :class:`LatentCacheError` naming every damaged shard, or saying that the data
    changed. The returned line says what was checked.
    """
    cache_dir = Path(cache_dir)
    manifest = read_complete_manifest(cache_dir)
    damaged = []
    for shard in manifest["shards"]:
        path = cache_dir / shard["file"]
        try:
            check_shard(path, shard, manifest)
            if file_sha256(path) != shard.get("sha256"):
                raise LatentCacheError("its sha256 differs from the one recorded at extraction")
        except LatentCacheError as error:
            damaged.append(f"{shard['file']} ({error})")
    if damaged:
        raise LatentCacheError(
            f"The latent cache {cache_dir} has {len(damaged)} damaged shard(s): "
            f"{'; '.join(damaged)}. Delete them and {RERUN_HINT}."
        )
    if dataset is None:
        dataset, described = recorded_dataset(manifest)
    else:
        described = "the given dataset"
    if dataset is None:
        data_note = f"dataset not checked: {described}"
    elif dataset_fingerprint(dataset)["sha256"] != manifest["dataset"]["sha256"]:
        raise LatentCacheError(
            f"The latent cache {cache_dir} was extracted from other data than {described} holds now "
            "(file list, sizes, labels or pixels differ); extract it again, overwriting it."
        )
    else:
        data_note = f"{described} is unchanged"
    size = sum((cache_dir / shard["file"]).stat().st_size for shard in manifest["shards"])
    return (
        f"{cache_dir}: {manifest['num_samples']} images in {len(manifest['shards'])} shards "
        f"({size / 1e6:.1f} MB) match their recorded sha256; {data_note}."
    )
