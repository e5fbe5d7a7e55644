"""Datasets: the built-in animal silhouettes and class-per-folder image sets."""

from sdtgen.data.animals import ANIMAL_CLASSES, AnimalsDataset, load_animals
from sdtgen.data.folders import (
    CorruptImageError,
    ImageFolderDataset,
    adm_center_crop,
    save_class_to_idx,
    scan_images,
)

__all__ = [
    "ANIMAL_CLASSES",
    "AnimalsDataset",
    "CorruptImageError",
    "ImageFolderDataset",
    "adm_center_crop",
    "load_animals",
    "save_class_to_idx",
    "scan_images",
]
