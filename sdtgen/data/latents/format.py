"""The latent cache on disk: names, the manifest, shard headers, and the identities it records.

A cache folder holds ``manifest.json`` and shards ``shard-00000.safetensors``, ... Shard
``k`` holds images ``[k * shard_size, (k + 1) * shard_size)`` of the dataset, each encoded
as is and horizontally flipped: tensors ``mean``, ``logvar``, ``mean_flip``,
``logvar_flip`` of shape (n, C, h, w) in the storage dtype and ``labels`` (n,) int64.
docs/latents.md describes every manifest field.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from sdtgen.data.animals import AnimalsDataset
from sdtgen.data.folders import ImageFolderDataset
from sdtgen.vae import LatentVAE

FORMAT = "sdtgen-latents"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MOMENT_KEYS = ("mean", "logvar", "mean_flip", "logvar_flip")
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# safetensors dtype codes of the tensors a shard may hold.
NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}
SAFETENSORS_CODES = {"float16": "F16", "float32": "F32"}
RERUN_HINT = "re-run the same extraction; it keeps the shards that verify and recomputes only the missing ones"


class LatentCacheError(ValueError):
    """A latent cache is incomplete, damaged, or was made with other settings."""


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-00000.safetensors``, ..."""
    return f"shard-{index:05d}.safetensors"


# --------------------------------------------------------------------------- identities


def animals_source(split: str) -> dict[str, Any]:
    """How a manifest records the built-in set's ``split`` (without its hash)."""
    return {"kind": "animals", "split": split}


def folder_source(root: str | os.PathLike, image_size: int) -> dict[str, Any]:
    """How a manifest records an image folder cropped to ``image_size`` (without its hash)."""
    return {"kind": "image_folder", "root": str(Path(root).resolve()), "image_size": image_size}


def unwrap_subsets(dataset: Dataset) -> tuple[Dataset, np.ndarray | None]:
    """The innermost dataset under (nested) Subsets and the composed indices into it."""
    indices = None
    while isinstance(dataset, Subset):
        outer = np.asarray(dataset.indices, dtype=np.int64)
        indices = outer if indices is None else outer[indices]
        dataset = dataset.dataset
    return dataset, indices


def dataset_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """A JSON-ready identity of ``dataset``'s contents and order, stable across machines.

    Supported: :class:`AnimalsDataset` (hash of the split's pixels and labels),
    :class:`ImageFolderDataset` (hash of the relative paths, file sizes and labels in
    dataset order, the class_to_idx and the image size; file contents are not read, but
    every file is stat-ed), and torch ``Subset``\\ s of them (plus a hash of the indices).
    ``sha256`` is the identity; the other fields say where the data came from.
    """
    base, indices = unwrap_subsets(dataset)
    if getattr(base, "random_flip", False) or getattr(base, "transform", None) is not None:
        raise ValueError(
            "Latent extraction needs a deterministic dataset, but this one has random_flip "
            "or a transform. Create it with random_flip=False and no transform: extraction "
            "stores both orientations of every image itself."
        )
    digest = hashlib.sha256()
    if isinstance(base, AnimalsDataset):
        fingerprint = animals_source(base.split)
        digest.update(f"animals/{base.split}\n".encode())
        digest.update(base.images.numpy().tobytes())
        digest.update(base.labels.numpy().astype("<i8").tobytes())
    elif isinstance(base, ImageFolderDataset):
        fingerprint = folder_source(base.root, base.image_size)
        header = {"image_size": base.image_size, "class_to_idx": base.class_to_idx}
        digest.update(f"image_folder\n{json.dumps(header, sort_keys=True)}\n".encode())
        for path, label in base.samples:
            relative = Path(os.path.relpath(path, base.root)).as_posix()
            digest.update(f"{relative}\0{os.path.getsize(path)}\0{label}\n".encode())
    else:
        raise TypeError(
            f"Cannot extract latents of a {type(base).__name__}: supported datasets are "
            "AnimalsDataset, ImageFolderDataset and torch Subsets of them (the cache needs "
            "a fingerprint of the data to resume safely)."
        )
    if indices is not None:
        fingerprint["subset"] = True
        digest.update(b"subset\n" + indices.astype("<i8").tobytes())
    fingerprint.update(num_samples=len(dataset), sha256=digest.hexdigest())
    return fingerprint


def vae_fingerprint(vae: LatentVAE) -> dict[str, Any]:
    """``vae.describe()`` plus ``weights_sha256``, a hash of every weight (names, dtypes, bytes).

    The weight hash, not the ``source`` string, identifies the VAE: the same folder can be
    reached by several paths, and a retrained VAE can keep its name.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {**vae.describe(), "weights_sha256": digest.hexdigest()}


def vae_identity(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """A VAE fingerprint as identity fields ``vae.<key>``: all but ``source`` (a name, not the weights)."""
    return {f"vae.{key}": value for key, value in sorted(fingerprint.items()) if key != "source"}


def cache_identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The fields that must agree for a cache to be resumed (not the shard records)."""
    return {
        "format_version": manifest.get("format_version"),
        "dataset.sha256": manifest.get("dataset", {}).get("sha256"),
        "num_samples": manifest.get("num_samples"),
        **vae_identity(manifest.get("vae", {})),
        "latent_shape": manifest.get("latent_shape"),
        "dtype": manifest.get("dtype"),
        "shard_size": manifest.get("shard_size"),
        "class_names": manifest.get("class_names"),
    }


def identity_differences(manifest: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """``"field: recorded -> expected"`` for each field of ``expected`` the manifest records otherwise.

    Fields are dotted paths into the manifest (``"dataset.root"``, ``"vae.scale"``,
    ``"latent_shape"``); a field the manifest lacks is recorded as None.
    """
    differences = []
    for field, wanted in expected.items():
        recorded: Any = manifest
        for part in field.split("."):
            recorded = recorded.get(part) if isinstance(recorded, dict) else None
        if recorded != wanted:
            differences.append(f"{field}: {_short(recorded)} -> {_short(wanted)}")
    return differences


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- files


def read_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a latent cache; clear errors if missing or foreign."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No latent cache at {cache_dir}: {path} does not exist. Extract one first (docs/latents.md)."
        )
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LatentCacheError(
            f"{path} is not valid JSON ({error}); extract the cache again, overwriting it."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LatentCacheError(f"{path} is not an sdtgen latent cache manifest.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise LatentCacheError(
            f"{path} has cache format version {manifest.get('format_version')}, this sdtgen "
            f"reads version {FORMAT_VERSION}; extract the cache again, overwriting it."
        )
    return manifest


def check_shard_records(manifest: dict[str, Any]) -> None:
    """Check that the manifest's shard records tile ``[0, num_samples)`` in order, as named.

    Raises :class:`LatentCacheError`; reads no file.
    """
    start = 0
    for index, shard in enumerate(manifest["shards"]):
        if (shard.get("file"), shard.get("start")) != (shard_name(index), start) or not shard.get("count", 0) > 0:
            raise LatentCacheError(
                f"The manifest's shard record {index} ({shard}) does not follow "
                f"{shard_name(index)} at image {start}; the manifest is damaged."
            )
        start += shard["count"]
    if start != manifest["num_samples"]:
        raise LatentCacheError(
            f"The manifest's shards hold {start} images, it says num_samples "
            f"{manifest['num_samples']}; the manifest is damaged."
        )


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors header (8-byte little-endian length, then JSON) and where data starts."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else size
        if 8 + length > size:
            raise LatentCacheError("its header is cut off")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LatentCacheError("its header is not valid JSON") from None
    return header, 8 + length


def shard_metadata(shard: dict[str, Any]) -> dict[str, str]:
    """Safetensors metadata naming a shard's images. One key holding sorted JSON, because
    safetensors writes several metadata keys in a random order, and a shard's bytes must
    not depend on the run that wrote it (resume and multi-process runs compare them)."""
    return {FORMAT: json.dumps({"start": shard["start"], "count": shard["count"]}, sort_keys=True)}


def _parse_shard_metadata(metadata: dict[str, str] | None) -> dict[str, Any] | None:
    try:
        return json.loads((metadata or {})[FORMAT])
    except (KeyError, TypeError, json.JSONDecodeError):
        return None


def check_shard(path: Path, shard: dict[str, Any], manifest: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Check a shard's header against the manifest: tensors, shapes, dtypes, counts, size.

    Reads the header only, not the data. Returns the header (tensor names to entries) and
    the data offset; raises :class:`LatentCacheError` saying what is wrong (without naming
    the shard: callers add that).
    """
    if not path.is_file():
        raise LatentCacheError("the file is missing")
    header, data_start = read_header(path)
    count, shape = shard["count"], [shard["count"], *manifest["latent_shape"]]
    expected = {key: (SAFETENSORS_CODES[manifest["dtype"]], shape) for key in MOMENT_KEYS}
    expected["labels"] = ("I64", [count])
    # Popped so that the caller's header maps tensor names only.
    where = _parse_shard_metadata(header.pop("__metadata__", None))
    if where is None:
        raise LatentCacheError(f"its header has no {FORMAT!r} metadata (not a latent shard)")
    if where != {"start": shard["start"], "count": count}:
        raise LatentCacheError(f"it holds images {where}, the manifest expects start {shard['start']}, count {count}")
    if set(header) != set(expected):
        raise LatentCacheError(f"it holds tensors {sorted(header)}, expected {sorted(expected)}")
    for key, (dtype, tensor_shape) in expected.items():
        if header[key].get("dtype") != dtype or header[key].get("shape") != tensor_shape:
            raise LatentCacheError(
                f"tensor {key!r} is {header[key].get('dtype')} "
                f"{header[key].get('shape')}, expected {dtype} {tensor_shape}"
            )
    data_end = data_start + max(entry["data_offsets"][1] for entry in header.values())
    size = path.stat().st_size
    if size != data_end or ("bytes" in shard and size != shard["bytes"]):
        raise LatentCacheError(f"it is {size} bytes, expected {shard.get('bytes', data_end)} (truncated?)")
    return header, data_start


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in blocks (shards and weights can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
