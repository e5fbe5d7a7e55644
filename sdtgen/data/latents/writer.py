"""Writing a latent cache: encode a dataset once, shard by shard, resumable and split over processes."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sdtgen.data.latents.format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    MOMENT_KEYS,
    STORAGE_DTYPES,
    LatentCacheError,
    cache_identity,
    check_shard,
    dataset_fingerprint,
    file_sha256,
    identity_differences,
    read_manifest,
    shard_metadata,
    shard_name,
    unwrap_subsets,
    vae_fingerprint,
)
from sdtgen.vae import LatentVAE

logger = logging.getLogger(__name__)


class CacheMismatchError(LatentCacheError):
    """The output folder holds a cache made from other data or with another VAE or layout."""


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and ``os.replace``, so ``path`` is never half-written.

    The temporary name carries the pid: processes that share the cache folder by mistake
    (a misconfigured launch) must not write into one another's temporary file.
    """
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically."""
    _write_atomic(out_dir / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())


def write_shard(out_dir: Path, shard: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Write one shard file atomically; return its full manifest record (with bytes and sha256)."""
    data = safetensors.torch.save(tensors, metadata=shard_metadata(shard))
    _write_atomic(out_dir / shard["file"], data)
    return {**shard, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def plan_cache(dataset: Dataset, vae: LatentVAE, shard_size: int, dtype: str) -> dict[str, Any]:
    """The manifest of the cache of ``dataset`` encoded by ``vae``, shard records not yet filled in.

    Reads one image (for the shapes) and fingerprints the dataset and the VAE.
    """
    image_shape = tuple(dataset[0][0].shape)
    factor = vae.downsample_factor
    if len(image_shape) != 3 or image_shape[1] % factor or image_shape[2] % factor:
        raise ValueError(
            f"Images of shape {image_shape} do not fit the VAE {vae.source!r} "
            f"(C, H, W with H and W divisible by {factor})."
        )
    num_samples = len(dataset)
    class_names = list(unwrap_subsets(dataset)[0].classes)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "num_samples": num_samples,
        "image_shape": list(image_shape),
        "latent_shape": [vae.latent_channels, image_shape[1] // factor, image_shape[2] // factor],
        "dtype": dtype,
        "keys": [*MOMENT_KEYS, "labels"],
        "shard_size": shard_size,
        "shards": [
            {"file": shard_name(index), "start": start, "count": min(shard_size, num_samples - start)}
            for index, start in enumerate(range(0, num_samples, shard_size))
        ],
        "vae": vae_fingerprint(vae),
        "scale": vae.scale,
        "shift": vae.shift,
        "dataset": dataset_fingerprint(dataset),
        "class_names": class_names,
        "class_to_idx": {name: index for index, name in enumerate(class_names)},
    }


def _matching_previous(out_dir: Path, plan: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest already in ``out_dir`` if it describes the same cache; else a clear error."""
    if not (out_dir / MANIFEST_NAME).exists():
        if any(out_dir.glob("shard-*.safetensors")):
            raise CacheMismatchError(f"{out_dir} holds shard files but no {MANIFEST_NAME}.")
        return None
    try:
        previous = read_manifest(out_dir)
    except LatentCacheError as error:
        raise CacheMismatchError(str(error)) from None
    differences = identity_differences(previous, cache_identity(plan))
    if differences:
        raise CacheMismatchError(f"{out_dir} holds a latent cache made with other settings ({'; '.join(differences)}).")
    return previous


def _clear(out_dir: Path) -> None:
    """Remove the cache files (only those) from ``out_dir``."""
    for path in [out_dir / MANIFEST_NAME, *out_dir.glob("shard-*.safetensors*")]:
        path.unlink(missing_ok=True)


def _kept_record(
    out_dir: Path, shard: dict[str, Any], plan: dict[str, Any], previous: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The full record of an existing shard that verifies, or None if it must be computed.

    Shards are written atomically, so an existing file is complete unless damaged later;
    the header check catches truncation and the sha256 (when an earlier run recorded it)
    catches changed bytes.
    """
    path = out_dir / shard["file"]
    if not path.exists():
        return None
    try:
        check_shard(path, shard, plan)
    except LatentCacheError as error:
        logger.warning("%s is damaged (%s); recomputing it.", path, error)
        return None
    sha256 = file_sha256(path)
    recorded = {record["file"]: record for record in (previous or {}).get("shards", [])}
    if recorded.get(shard["file"], {}).get("sha256", sha256) != sha256:
        logger.warning("%s does not match its recorded sha256; recomputing it.", path)
        return None
    return {**shard, "bytes": path.stat().st_size, "sha256": sha256}


def _encode_shards(
    dataset: Dataset,
    vae: LatentVAE,
    shards: list[dict[str, Any]],
    out_dir: Path,
    dtype: str,
    batch_size: int,
    num_workers: int,
    progress_bar: tqdm,
) -> list[dict[str, Any]]:
    """Encode ``shards`` (each image and its mirror image in one batch) and write them."""
    if not shards:
        return []  # without starting DataLoader workers
    device = next((parameter.device for parameter in vae.parameters()), torch.device("cpu"))
    # Batches never cross a shard boundary, so a shard's bytes do not depend on which
    # other shards this process computes (one process or many give the same files). The
    # loader keeps the batches' order whatever the number of workers.
    batches = [
        list(range(begin, min(begin + batch_size, shard["start"] + shard["count"])))
        for shard in shards
        for begin in range(shard["start"], shard["start"] + shard["count"], batch_size)
    ]
    batch_iterator = iter(DataLoader(dataset, batch_sampler=batches, num_workers=num_workers))
    records = []
    for shard in shards:
        parts: dict[str, list[torch.Tensor]] = {key: [] for key in (*MOMENT_KEYS, "labels")}
        for _ in range(math.ceil(shard["count"] / batch_size)):
            images, labels = next(batch_iterator)
            mean, logvar = vae.encode_moments(torch.cat([images, images.flip(-1)]).to(device), check=False)
            mean, mean_flip = mean.chunk(2)
            logvar, logvar_flip = logvar.chunk(2)
            for key, value in zip(MOMENT_KEYS, (mean, logvar, mean_flip, logvar_flip)):
                parts[key].append(value.to("cpu", STORAGE_DTYPES[dtype]))
            parts["labels"].append(torch.as_tensor(labels, dtype=torch.int64))
            progress_bar.update(len(images))
        # contiguous: the VAE's moments are strided views into one (B, 2C, h, w) output.
        tensors = {key: torch.cat(values).contiguous() for key, values in parts.items()}
        for key in MOMENT_KEYS:
            if not torch.isfinite(tensors[key]).all():
                raise ValueError(
                    f"The VAE gave non-finite {key} values for images {shard['start']} to "
                    f"{shard['start'] + shard['count'] - 1} (in {dtype}). If the VAE's outputs "
                    "exceed the float16 range, store them in float32; otherwise check those "
                    "images and the VAE."
                )
        records.append(write_shard(out_dir, shard, tensors))
    return records


def extract_latents(
    dataset: Dataset,
    vae: LatentVAE,
    out_dir: str | os.PathLike,
    *,
    shard_size: int = 10_000,
    batch_size: int = 64,
    dtype: str = "float16",
    num_workers: int = 0,
    overwrite: bool = False,
    accelerator: Accelerator | None = None,
    progress: bool = True,
) -> Path:
    """Encode every image of ``dataset`` and its horizontal flip into a latent cache.

    ``dataset`` yields ``(image, label)`` with images in [-1, 1] (see
    :func:`dataset_fingerprint` for the supported types), read by ``num_workers``
    DataLoader workers (the shards are the same for any number); the VAE runs on the
    device it is on. Shards that already exist in ``out_dir`` and verify are kept
    (resume); an existing cache made from other data or another VAE is a
    :class:`CacheMismatchError` unless ``overwrite``, which deletes the cache files first.
    ``dtype`` ("float16" or "float32") is the storage dtype of the moments. With an
    ``accelerator`` of several processes, shard k is computed by process
    k % num_processes and the main process writes the manifest at the end; every process
    must call this. Returns the path of ``manifest.json``.
    """
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty; there is nothing to extract.")
    out_dir = Path(out_dir)
    process_index, num_processes = (
        (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)
    )
    is_main = process_index == 0

    def barrier() -> None:
        if accelerator is not None:
            accelerator.wait_for_everyone()

    plan = plan_cache(dataset, vae, shard_size, dtype)
    # Every process checks the folder before the first barrier, so that a mismatch stops
    # all of them with the same error instead of leaving the others waiting.
    previous = None if overwrite or not out_dir.is_dir() else _matching_previous(out_dir, plan)
    barrier()
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _clear(out_dir)
        write_manifest(out_dir, plan)  # marked incomplete until every shard is written
    barrier()

    mine = plan["shards"][process_index::num_processes]
    kept = {shard["file"]: _kept_record(out_dir, shard, plan, previous) for shard in mine}
    records = [record for record in kept.values() if record is not None]
    todo = [shard for shard in mine if kept[shard["file"]] is None]
    images_todo = sum(shard["count"] for shard in todo)
    if is_main and len(mine) > len(todo):
        logger.info(
            "Resuming %s: kept %d verified shards of this process, computing %d.",
            out_dir,
            len(mine) - len(todo),
            len(todo),
        )
    description = "encoding latents" + (f" (process 1 of {num_processes})" if num_processes > 1 else "")
    start_time = time.perf_counter()
    show = progress and is_main and images_todo > 0
    with tqdm(total=images_todo, desc=description, unit="img", disable=not show) as bar:
        records += _encode_shards(dataset, vae, todo, out_dir, dtype, batch_size, num_workers, bar)
    seconds = time.perf_counter() - start_time
    if is_main and images_todo:
        logger.info(
            "Encoded %d images and their flips in %.1f s (%.0f images/s in this process).",
            images_todo,
            seconds,
            images_todo / seconds,
        )

    if num_processes > 1:
        records = gather_object(records)
    if is_main:
        write_manifest(
            out_dir, {**plan, "complete": True, "shards": sorted(records, key=lambda record: record["start"])}
        )
    barrier()
    return out_dir / MANIFEST_NAME
