"""What the trainer reads: posterior moments of the latents, from a cache or encoded on the fly.

Both sources are indexed by `(index, flip)` keys (training/randomness.py decides the keys)
and yield `(mean, logvar, label)` batches; the trainer draws the latent from the moments.
A complete latent cache is opened by its manifest alone, so start-up does not grow with
the data set and the images need not be there; only a missing or unfinished cache makes
training read the images and extract it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader, Dataset

from sdtgen.config import DataConfig
from sdtgen.data.animals import ANIMAL_CLASSES, IMAGE_SIZE, AnimalsDataset
from sdtgen.data.folders import ImageFolderDataset
from sdtgen.data.latents import CacheMismatchError, LatentCacheError, LatentDataset, extract_latents, read_manifest
from sdtgen.data.latents.format import (
    animals_source,
    folder_source,
    identity_differences,
    vae_fingerprint,
    vae_identity,
)
from sdtgen.vae import LatentVAE, load_vae


def image_dataset(dataset: str, split: str, image_size: int, on_error: str) -> Dataset:
    """`animals` (the built-in set) or a class-per-folder image directory, unflipped."""
    if dataset == "animals":
        return AnimalsDataset(split)
    if not Path(dataset).is_dir():
        raise FileNotFoundError(f"data.dataset={dataset!r} is neither 'animals' nor an image folder.")
    return ImageFolderDataset(dataset, image_size, on_error=on_error)


def image_shape(data: DataConfig) -> tuple[int, int, int]:
    """(C, H, W) of the images `data.dataset` gives, known without reading any."""
    if data.dataset == "animals":
        return 1, IMAGE_SIZE, IMAGE_SIZE
    return 3, data.image_size, data.image_size  # ImageFolderDataset: RGB, square centre crops


def class_names_of(dataset: Dataset) -> list[str]:
    return list(getattr(dataset, "classes", ANIMAL_CLASSES))


class EncodedOnTheFly(Dataset):
    """Images keyed by (index, flip), encoded to moments by the VAE batch-wise in the trainer."""

    def __init__(self, images: Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, bool]) -> tuple[torch.Tensor, int]:
        index, flip = key
        image, label = self.images[index]
        return (image.flip(-1) if flip else image), label


@dataclass
class TrainingData:
    dataset: Dataset  # keyed by (index, flip)
    encoded: bool  # True: items are (mean, logvar, label); False: (image, label)
    class_names: list[str]
    latent_shape: tuple[int, int, int]

    def loader(self, keys_per_step, num_workers: int = 0) -> DataLoader:
        """Batches for the given per-step key lists, prefetched by `num_workers` workers."""
        return DataLoader(
            self.dataset, batch_sampler=keys_per_step, num_workers=num_workers, persistent_workers=num_workers > 0
        )

    def moments(self, batch, vae: LatentVAE, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.encoded:
            mean, logvar, labels = batch
            return mean.to(device), logvar.to(device), labels.to(device)
        images, labels = batch
        mean, logvar = vae.encode_moments(images.to(device), check=False)  # the loader scaled them
        return mean.float(), logvar.float(), labels.to(device)


def prepare_training_data(config, accelerator: Accelerator) -> tuple[TrainingData, LatentVAE]:
    """The VAE, and the latent cache (extracted first if missing or unfinished) or on-the-fly encoding."""
    data = config.data
    if data.latent_cache is None:
        images = image_dataset(data.dataset, data.split, data.image_size, data.on_error)
        image = images[0][0]
        vae = load_vae(data.vae, image_channels=image.shape[0], device=accelerator.device)
        factor = vae.downsample_factor
        latent_shape = (vae.latent_channels, image.shape[-2] // factor, image.shape[-1] // factor)
        return TrainingData(EncodedOnTheFly(images), False, class_names_of(images), latent_shape), vae
    vae = load_vae(data.vae, image_channels=image_shape(data)[0], device=accelerator.device)
    cache = open_latent_cache(data, vae, accelerator)
    return TrainingData(cache, True, cache.class_names, cache.latent_shape), vae


def open_latent_cache(data: DataConfig, vae: LatentVAE, accelerator: Accelerator) -> LatentDataset:
    """The cache `data.latent_cache` of `data.dataset` encoded by `vae`, extracted first if needed.

    The main process decides, from the manifest and the shard headers alone, whether the
    cache is complete and made from what the config names; all processes follow it, since
    extraction is a collective step. A cache made from other data or with another VAE is
    an error; a missing or unfinished one is extracted (every process takes its shards).
    """
    decision = [_cache_state(data, vae) if accelerator.is_main_process else None]
    broadcast_object_list(decision)
    action, reason = decision[0]
    if action == "error":
        raise CacheMismatchError(reason)
    if action == "extract":
        if data.dataset != "animals" and not Path(data.dataset).is_dir():
            raise FileNotFoundError(
                f"The latent cache {data.latent_cache} must be extracted first ({reason}), but "
                f"data.dataset={data.dataset!r} is neither 'animals' nor an image folder."
            )
        accelerator.print(f"Extracting the latent cache {data.latent_cache}: {reason}.")
        images = image_dataset(data.dataset, data.split, data.image_size, data.on_error)
        try:
            extract_latents(
                images,
                vae,
                data.latent_cache,
                batch_size=data.extract_batch_size,
                num_workers=data.num_workers,
                accelerator=accelerator,
                **_recorded_storage(data.latent_cache),
            )
        except CacheMismatchError as error:
            raise CacheMismatchError(f"{error} Point data.latent_cache at a new folder, or delete this one.") from None
    return LatentDataset(data.latent_cache)


def _cache_state(data: DataConfig, vae: LatentVAE) -> tuple[str, str]:
    """("open" | "extract" | "error", why) for `data.latent_cache`, by its manifest and shard headers."""
    try:
        manifest = LatentDataset(data.latent_cache).manifest
    except FileNotFoundError:
        return "extract", "there is none yet"
    except LatentCacheError as error:
        return "extract", str(error)
    source = animals_source(data.split) if data.dataset == "animals" else folder_source(data.dataset, data.image_size)
    channels, height, width = image_shape(data)
    factor = vae.downsample_factor
    expected: dict[str, Any] = {
        **{f"dataset.{key}": value for key, value in source.items() if key != "root"},
        "dataset.subset": None,
        "image_shape": [channels, height, width],
        "latent_shape": [vae.latent_channels, height // factor, width // factor],
        **vae_identity(vae_fingerprint(vae)),
    }
    if data.dataset == "animals":
        expected["class_names"] = list(ANIMAL_CLASSES)
    differences = identity_differences(manifest, expected)
    if differences:
        return "error", (
            f"The latent cache {data.latent_cache} was made from other data or with another VAE than the "
            f"config's ({'; '.join(differences)}); point data.latent_cache at a new folder."
        )
    recorded_root = manifest["dataset"].get("root")
    if recorded_root != source.get("root"):
        # A moved image folder: only a fingerprint of the folder can tell whether it holds the same images.
        if Path(data.dataset).is_dir():
            return (
                "extract",
                f"it was extracted from {recorded_root}; checking that {data.dataset} holds the same images",
            )
        return "error", (
            f"The latent cache {data.latent_cache} was extracted from {recorded_root}, but data.dataset="
            f"{data.dataset!r} is neither that folder nor an image folder."
        )
    return "open", ""


def _recorded_storage(cache_dir: str) -> dict[str, Any]:
    """Shard size and dtype of an existing cache, so that its extraction resumes with them."""
    try:
        manifest = read_manifest(cache_dir)
    except (OSError, LatentCacheError):
        return {}
    return {"shard_size": manifest["shard_size"], "dtype": manifest["dtype"]}
