"""The latent cache: VAE posterior moments of a dataset, encoded once, read memory-mapped.

``format`` names the files and parses the manifest and shard headers, ``writer`` extracts
(resumable, split over processes), ``reader`` opens a cache by its manifest
(:class:`LatentDataset`) or verifies every byte of it (:func:`verify_cache`). The moments
are *unscaled* (as :meth:`LatentVAE.encode_moments` returns them);
:meth:`LatentDataset.draw_latents` draws a fresh posterior sample and applies the VAE's
scale/shift, which the manifest records. docs/latents.md describes the format, resume and
multi-process extraction.
"""

from sdtgen.data.latents.format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    LatentCacheError,
    dataset_fingerprint,
    file_sha256,
    read_manifest,
    shard_name,
    vae_fingerprint,
)
from sdtgen.data.latents.reader import LatentDataset, recorded_dataset, verify_cache
from sdtgen.data.latents.writer import CacheMismatchError, extract_latents

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "CacheMismatchError",
    "LatentCacheError",
    "LatentDataset",
    "dataset_fingerprint",
    "extract_latents",
    "file_sha256",
    "read_manifest",
    "recorded_dataset",
    "shard_name",
    "vae_fingerprint",
    "verify_cache",
]
