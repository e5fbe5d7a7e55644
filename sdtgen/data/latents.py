"""The latent cache: VAE posterior moments of a dataset, encoded once, read memory-mapped.

A cache folder holds ``manifest.json`` and shards ``shard-00000.safetensors``, ... Shard
``k`` holds images ``[k * shard_size, (k + 1) * shard_size)`` of the dataset, each encoded
as is and horizontally flipped: tensors ``mean``, ``logvar``, ``mean_flip``,
``logvar_flip`` of shape (n, C, h, w) in the storage dtype (float16 by default) and
``labels`` (n,) int64. The moments are *unscaled* (as :meth:`LatentVAE.encode_moments`
returns them); :meth:`LatentDataset.draw_latents` draws a fresh posterior sample and
applies the VAE's scale/shift, which the manifest records. docs/latents.md describes the
manifest fields, resume and multi-process extraction.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import math
import operator
import os
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from sdtgen.data.animals import AnimalsDataset
from sdtgen.data.folders import ImageFolderDataset
from sdtgen.vae import LatentVAE

logger = logging.getLogger(__name__)

FORMAT = "sdtgen-latents"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MOMENT_KEYS = ("mean", "logvar", "mean_flip", "logvar_flip")
STORAGE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# safetensors dtype codes of the tensors a shard may hold.
_NUMPY_DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64}
_SAFETENSORS_CODES = {"float16": "F16", "float32": "F32"}
# As in LatentVAE.sample_latent (diffusers' clamp of the posterior log-variance).
_LOGVAR_RANGE = (-30.0, 20.0)
_RERUN_HINT = ("re-run the same `sdtgen extract-latents` command (or extract_latents call); "
               "it keeps the shards that verify and recomputes only the missing ones")


class LatentCacheError(ValueError):
    """A latent cache is incomplete, damaged, or was made with other settings."""


def shard_name(index: int) -> str:
    """File name of shard ``index``: ``shard-00000.safetensors``, ..."""
    return f"shard-{index:05d}.safetensors"


# --------------------------------------------------------------------------- identities


def _unwrap_subsets(dataset: Dataset) -> tuple[Dataset, np.ndarray | None]:
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
    dataset order, the class_to_idx and the image size; file contents are not read, so it
    stays cheap for ImageNet), and torch ``Subset``\\ s of them (plus a hash of the indices).
    ``sha256`` is the identity; the other fields are there for people reading the manifest.
    """
    base, indices = _unwrap_subsets(dataset)
    if getattr(base, "random_flip", False) or getattr(base, "transform", None) is not None:
        raise ValueError(
            "Latent extraction needs a deterministic dataset, but this one has random_flip "
            "or a transform. Create it with random_flip=False and no transform: extraction "
            "stores both orientations of every image itself."
        )
    digest = hashlib.sha256()
    if isinstance(base, AnimalsDataset):
        fingerprint: dict[str, Any] = {"kind": "animals", "split": base.split}
        digest.update(f"animals/{base.split}\n".encode())
        digest.update(base.images.numpy().tobytes())
        digest.update(base.labels.numpy().astype("<i8").tobytes())
    elif isinstance(base, ImageFolderDataset):
        fingerprint = {"kind": "image_folder", "root": str(Path(base.root).resolve()),
                       "image_size": base.image_size}
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


def _class_names(dataset: Dataset) -> list[str]:
    base, _ = _unwrap_subsets(dataset)
    return list(base.classes)


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields that must agree for a cache to be resumed (not the shard records)."""
    vae = manifest.get("vae", {})
    return {
        "format_version": manifest.get("format_version"),
        "dataset": manifest.get("dataset", {}).get("sha256"),
        "num_samples": manifest.get("num_samples"),
        # One entry per VAE field, so that a mismatch names the field.
        **{f"vae.{key}": vae.get(key) for key in sorted(vae) if key != "source"},
        "latent_shape": manifest.get("latent_shape"),
        "dtype": manifest.get("dtype"),
        "shard_size": manifest.get("shard_size"),
        "class_names": manifest.get("class_names"),
    }


# --------------------------------------------------------------------------- files


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


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    _write_atomic(out_dir / MANIFEST_NAME, (json.dumps(manifest, indent=2) + "\n").encode())


def read_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a latent cache; clear errors if missing or foreign."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No latent cache at {cache_dir}: {path} does not exist. Create the cache with "
            f"`sdtgen extract-latents --out {cache_dir}` (see `sdtgen extract-latents --help`)."
        )
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LatentCacheError(f"{path} is not valid JSON ({error}); re-create the cache with "
                               "`sdtgen extract-latents --overwrite`.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LatentCacheError(f"{path} is not an sdtgen latent cache manifest.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise LatentCacheError(
            f"{path} has cache format version {manifest.get('format_version')}, this sdtgen "
            f"reads version {FORMAT_VERSION}; re-create it with `sdtgen extract-latents --overwrite`."
        )
    return manifest


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
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


def _shard_metadata(shard: dict[str, Any]) -> dict[str, str]:
    """Safetensors metadata naming a shard's images. One key holding sorted JSON, because
    safetensors writes several metadata keys in a random order, and a shard's bytes must
    not depend on the run that wrote it (resume and multi-process runs compare them)."""
    return {FORMAT: json.dumps({"start": shard["start"], "count": shard["count"]}, sort_keys=True)}


def _parse_shard_metadata(metadata: dict[str, str] | None) -> dict[str, Any] | None:
    try:
        return json.loads((metadata or {})[FORMAT])
    except (KeyError, TypeError, json.JSONDecodeError):
        return None


def _check_shard(path: Path, shard: dict[str, Any], manifest: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Check a shard's header against the manifest: tensors, shapes, dtypes, counts, size.

    Returns the header and the data offset; raises :class:`LatentCacheError` saying what
    is wrong (without naming the shard: callers add that).
    """
    if not path.is_file():
        raise LatentCacheError("the file is missing")
    header, data_start = _read_header(path)
    count, shape = shard["count"], [shard["count"], *manifest["latent_shape"]]
    expected = {key: (_SAFETENSORS_CODES[manifest["dtype"]], shape) for key in MOMENT_KEYS}
    expected["labels"] = ("I64", [count])
    # Popped so that the caller's header maps tensor names only.
    where = _parse_shard_metadata(header.pop("__metadata__", None))
    if where is None:
        raise LatentCacheError(f"its header has no {FORMAT!r} metadata (not a latent shard)")
    if where != {"start": shard["start"], "count": count}:
        raise LatentCacheError(f"it holds images {where}, the manifest expects "
                               f"start {shard['start']}, count {count}")
    if set(header) != set(expected):
        raise LatentCacheError(f"it holds tensors {sorted(header)}, expected {sorted(expected)}")
    for key, (dtype, tensor_shape) in expected.items():
        if header[key].get("dtype") != dtype or header[key].get("shape") != tensor_shape:
            raise LatentCacheError(f"tensor {key!r} is {header[key].get('dtype')} "
                                   f"{header[key].get('shape')}, expected {dtype} {tensor_shape}")
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


# --------------------------------------------------------------------------- extraction


def _plan(dataset: Dataset, vae: LatentVAE, shard_size: int, dtype: str) -> dict[str, Any]:
    """The manifest of the requested cache, with shard records not yet filled in."""
    image_shape = tuple(dataset[0][0].shape)
    factor = vae.downsample_factor
    if len(image_shape) != 3 or image_shape[1] % factor or image_shape[2] % factor:
        raise ValueError(f"Images of shape {image_shape} do not fit the VAE {vae.source!r} "
                         f"(C, H, W with H and W divisible by {factor}).")
    num_samples = len(dataset)
    class_names = _class_names(dataset)
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
    hint = "Pass a new output folder, or --overwrite (overwrite=True) to replace it."
    if not (out_dir / MANIFEST_NAME).exists():
        if any(out_dir.glob("shard-*.safetensors")):
            raise LatentCacheError(f"{out_dir} holds shard files but no {MANIFEST_NAME}. {hint}")
        return None
    try:
        previous = read_manifest(out_dir)
    except LatentCacheError as error:
        raise LatentCacheError(f"{error} {hint}") from None
    old, new = _identity(previous), _identity(plan)
    differences = [f"{key}: {_short(old.get(key))} -> {_short(new[key])}"
                   for key in new if old.get(key) != new[key]]
    if differences:
        raise LatentCacheError(
            f"{out_dir} holds a latent cache made with other settings ({'; '.join(differences)}). {hint}"
        )
    return previous


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _clear(out_dir: Path) -> None:
    """Remove the cache files (only those) from ``out_dir``."""
    for path in [out_dir / MANIFEST_NAME, *out_dir.glob("shard-*.safetensors*")]:
        path.unlink(missing_ok=True)


def _kept_record(out_dir: Path, shard: dict[str, Any], plan: dict[str, Any],
                 previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The full record of an existing shard that verifies, or None if it must be computed.

    Shards are written atomically, so an existing file is complete unless damaged later;
    the header check catches truncation and the sha256 (when an earlier run recorded it)
    catches changed bytes.
    """
    path = out_dir / shard["file"]
    if not path.exists():
        return None
    try:
        _check_shard(path, shard, plan)
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
    # other shards this process computes (one process or many give the same files).
    batches = [list(range(begin, min(begin + batch_size, shard["start"] + shard["count"])))
               for shard in shards
               for begin in range(shard["start"], shard["start"] + shard["count"], batch_size)]
    batch_iterator = iter(DataLoader(dataset, batch_sampler=batches, num_workers=num_workers))
    records = []
    for shard in shards:
        parts: dict[str, list[torch.Tensor]] = {key: [] for key in (*MOMENT_KEYS, "labels")}
        for _ in range(math.ceil(shard["count"] / batch_size)):
            images, labels = next(batch_iterator)
            mean, logvar = vae.encode_moments(torch.cat([images, images.flip(-1)]).to(device))
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
                    "exceed the float16 range, extract with --dtype float32; otherwise check "
                    "those images and the VAE."
                )
        data = safetensors.torch.save(tensors, metadata=_shard_metadata(shard))
        _write_atomic(out_dir / shard["file"], data)
        records.append({**shard, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
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
    :func:`dataset_fingerprint` for the supported types); the VAE runs on the device it is
    on. Shards that already exist in ``out_dir`` and verify are kept (resume); an existing
    cache made from other data or another VAE is an error unless ``overwrite``, which
    deletes the cache files first. ``dtype`` ("float16" or "float32") is the storage dtype
    of the moments. With an ``accelerator`` of several processes, shard k is computed by
    process k % num_processes and the main process writes the manifest at the end; every
    process must call this. Returns the path of ``manifest.json``.
    """
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty; there is nothing to extract.")
    out_dir = Path(out_dir)
    process_index, num_processes = (0, 1) if accelerator is None else (
        accelerator.process_index, accelerator.num_processes)
    is_main = process_index == 0

    def barrier() -> None:
        if accelerator is not None:
            accelerator.wait_for_everyone()

    plan = _plan(dataset, vae, shard_size, dtype)
    # Every process checks the folder before the first barrier, so that a mismatch stops
    # all of them with the same error instead of leaving the others waiting.
    previous = None if overwrite or not out_dir.is_dir() else _matching_previous(out_dir, plan)
    barrier()
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            _clear(out_dir)
        _write_manifest(out_dir, plan)  # marked incomplete until every shard is written
    barrier()

    mine = plan["shards"][process_index::num_processes]
    kept = {shard["file"]: _kept_record(out_dir, shard, plan, previous) for shard in mine}
    records = [record for record in kept.values() if record is not None]
    todo = [shard for shard in mine if kept[shard["file"]] is None]
    images_todo = sum(shard["count"] for shard in todo)
    if is_main and len(mine) > len(todo):
        logger.info("Resuming %s: kept %d verified shards of this process, computing %d.",
                    out_dir, len(mine) - len(todo), len(todo))
    description = "encoding latents" + (f" (process 1 of {num_processes})" if num_processes > 1 else "")
    start_time = time.perf_counter()
    show = progress and is_main and images_todo > 0
    with tqdm(total=images_todo, desc=description, unit="img", disable=not show) as bar:
        records += _encode_shards(dataset, vae, todo, out_dir, dtype, batch_size, num_workers, bar)
    seconds = time.perf_counter() - start_time
    if is_main and images_todo:
        logger.info("Encoded %d images and their flips in %.1f s (%.0f images/s in this process).",
                    images_todo, seconds, images_todo / seconds)

    if num_processes > 1:
        records = gather_object(records)
    if is_main:
        _write_manifest(out_dir, {**plan, "complete": True,
                                  "shards": sorted(records, key=lambda record: record["start"])})
    barrier()
    return out_dir / MANIFEST_NAME


# --------------------------------------------------------------------------- loading


class LatentDataset(Dataset):
    """A latent cache as a dataset: ``ds[i]`` or ``ds[i, flip]`` -> ``(mean, logvar, label)``.

    ``mean`` and ``logvar`` are float32 tensors (C, h, w), unscaled, of image ``i`` as is
    (``flip`` false; a plain int key) or mirrored (``flip`` true); ``label`` is an int.
    Reading is deterministic: the caller draws the flip bit and the posterior sample
    (:meth:`draw_latents`) with its own generator. Shards are memory-mapped, not loaded,
    and checked on opening (header, shapes, counts, size; not their sha256).
    """

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        if not self.manifest.get("complete"):
            raise LatentCacheError(f"The latent cache {self.cache_dir} is incomplete (extraction "
                                   f"did not finish); {_RERUN_HINT}.")
        self._open_shards()

    def _open_shards(self) -> None:
        self._starts = [shard["start"] for shard in self.manifest["shards"]]
        self._arrays = [self._map_shard(shard) for shard in self.manifest["shards"]]

    def _map_shard(self, shard: dict[str, Any]) -> dict[str, np.ndarray]:
        """Views into one read-only memory map of the whole shard file (one file handle each)."""
        path = self.cache_dir / shard["file"]
        try:
            header, data_start = _check_shard(path, shard, self.manifest)
        except LatentCacheError as error:
            raise LatentCacheError(f"Latent cache shard {path} is damaged: {error}. Delete it and "
                                   f"{_RERUN_HINT}.") from None
        raw = np.memmap(path, dtype=np.uint8, mode="r")
        arrays = {}
        for key, entry in header.items():
            begin, end = entry["data_offsets"]
            flat = raw[data_start + begin: data_start + end].view(_NUMPY_DTYPES[entry["dtype"]])
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

        Same convention as :meth:`LatentVAE.sample_latent`: noise is drawn on
        ``generator``'s device (so a seed gives the same latents everywhere), the
        log-variance is clamped to [-30, 20], and the identity VAE adds no noise.
        """
        if self.manifest["vae"]["type"] == "identity":
            z = mean
        else:
            device = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar.clamp(*_LOGVAR_RANGE)) * noise.to(mean.device)
        return (z - self.shift) * self.scale
