"""What the trainer reads: posterior moments of the latents, from a cache or encoded on the fly.

Both sources are indexed by `(index, flip)` keys (training/batches.py decides the keys)
and yield `(mean, logvar, label)` batches; the trainer draws the latent from the moments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from sdtgen.data.animals import ANIMAL_CLASSES, AnimalsDataset
from sdtgen.data.folders import ImageFolderDataset
from sdtgen.vae import LatentVAE, load_vae


def image_dataset(dataset: str, split: str, image_size: int, on_error: str) -> Dataset:
    """`animals` (the built-in set) or a class-per-folder image directory, unflipped."""
    if dataset == "animals":
        return AnimalsDataset(split)
    if not Path(dataset).is_dir():
        raise FileNotFoundError(f"data.dataset={dataset!r} is neither 'animals' nor an image folder.")
    return ImageFolderDataset(dataset, image_size, on_error=on_error)


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
        return DataLoader(self.dataset, batch_sampler=keys_per_step, num_workers=num_workers, persistent_workers=num_workers > 0)

    def moments(self, batch, vae: LatentVAE, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.encoded:
            mean, logvar, labels = batch
            return mean.to(device), logvar.to(device), labels.to(device)
        images, labels = batch
        mean, logvar = vae.encode_moments(images.to(device))
        return mean.float(), logvar.float(), labels.to(device)


def prepare_training_data(config, accelerator) -> tuple[TrainingData, LatentVAE]:
    """The VAE, and the latent cache (extracted first if needed) or on-the-fly encoding."""
    images = image_dataset(config.data.dataset, config.data.split, config.data.image_size, config.data.on_error)
    image = images[0][0]
    vae = load_vae(config.data.vae, image_channels=image.shape[0], device=accelerator.device)
    factor = vae.downsample_factor
    latent_shape = (vae.latent_channels, image.shape[-2] // factor, image.shape[-1] // factor)
    if config.data.latent_cache is None:
        return TrainingData(EncodedOnTheFly(images), False, class_names_of(images), latent_shape), vae

    from sdtgen.data.latents import LatentDataset, extract_latents

    extract_latents(images, vae, config.data.latent_cache, batch_size=config.data.extract_batch_size, accelerator=accelerator)
    cache = LatentDataset(config.data.latent_cache)
    if tuple(cache.latent_shape) != latent_shape:
        raise ValueError(
            f"The latent cache {config.data.latent_cache} holds latents of shape {tuple(cache.latent_shape)}, "
            f"but data.vae={config.data.vae!r} gives {latent_shape}; point data.latent_cache at a new folder."
        )
    return TrainingData(cache, True, list(cache.class_names), latent_shape), vae
