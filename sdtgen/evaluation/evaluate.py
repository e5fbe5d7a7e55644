"""`sdtgen eval`: sample a checkpoint at scale (or read a sample set) and score it, with provenance.

Samples are class-balanced by default (sample i has class i * K // N) or, with
`labels="uniform"`, drawn like DiT's evaluation (a label per sample from its own seed).
Every sample's noise comes from sample_seed(seed, i), so the set is the same on any
number of processes: each process samples a disjoint range of indices and the main
process gathers them, saves an ADM-style `.npz` (`arr_0` uint8 NHWC, `arr_1` labels) and
writes `metrics.json` with every setting that produced the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch_fidelity
from tqdm.auto import tqdm

from sdtgen.data.latents import file_sha256
from sdtgen.diffusion.sampling import sample_generators, sample_seed
from sdtgen.sampling_cli import check_finite

LABEL_MODES = ("balanced", "uniform")
INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def sample_labels(num_samples: int, num_classes: int, mode: str, seed: int) -> list[int]:
    """The class of every sample index: balanced blocks, or one uniform draw per sample seed."""
    if mode not in LABEL_MODES:
        raise ValueError(f"--labels must be one of {', '.join(LABEL_MODES)}, got {mode!r}.")
    if mode == "balanced":
        return [i * num_classes // num_samples for i in range(num_samples)]
    return [int(torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(sample_seed(seed, i) ^ 0x5EED))) for i in range(num_samples)]


def generate(pipe, labels: Sequence[int], indices: Sequence[int], *, seed: int, steps: int | None, cfg: float,
             cfg_channels: int | None, batch_size: int, progress: bool) -> torch.Tensor:
    """uint8 (len(indices), H, W, C) images for the given sample indices."""
    chunks = []
    bar = tqdm(total=len(indices), desc="sampling for eval", unit="img", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start : start + batch_size])
        images = pipe(class_labels=[labels[i] for i in chunk], num_inference_steps=steps, guidance_scale=cfg,
                      generator=sample_generators(seed, chunk), guidance_channels=cfg_channels, output_type="np").images
        check_finite(torch.from_numpy(images), f"Samples {chunk[0]}..{chunk[-1]}")
        chunks.append(torch.from_numpy((np.clip(images, 0, 1) * 255).round().astype(np.uint8)))
        bar.update(len(chunk))
    bar.close()
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)


def sample_checkpoint(ckpt: str | None, num_samples: int, *, labels_mode: str = "balanced", seed: int = 0,
                      steps: int | None = None, cfg: float | None = None, cfg_channels: int | None = None,
                      sampler: str | None = None, vae: str | None = None, batch_size: int = 250,
                      dtype: torch.dtype = torch.float32) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Sample `num_samples` images from a checkpoint across all processes.

    Returns (images uint8 NHWC, labels, settings) on the main process and (None, None,
    settings) elsewhere.
    """
    from accelerate.utils import gather_object

    from sdtgen.diffusion.sampling import default_steps
    from sdtgen.loading import find_source, load_pipeline, process_state

    if num_samples < 2:
        raise ValueError(f"--num-samples must be at least 2, got {num_samples}.")
    state = process_state()
    source = find_source(ckpt)
    run_sample = (source.run_config or {}).get("sample") or {}
    pipe = load_pipeline(source, vae=vae, sampler=sampler or run_sample.get("sampler"), dtype=dtype).to(state.device)
    pipe.set_progress_bar_config(disable=True)
    cfg = cfg if cfg is not None else (run_sample.get("cfg", 1.5) if source.model_config["class_dropout_prob"] > 0 else 1.0)
    steps = steps or run_sample.get("steps") or default_steps(pipe.scheduler)
    labels = sample_labels(num_samples, source.num_classes, labels_mode, seed)
    with state.split_between_processes(list(range(num_samples))) as mine:
        images = generate(pipe, labels, mine, seed=seed, steps=steps, cfg=cfg, cfg_channels=cfg_channels,
                          batch_size=batch_size, progress=state.is_main_process)
    gathered = gather_object([images])
    weights = next(source.model_dir.glob("*.safetensors"), None)
    settings = {
        "ckpt": str(source.path), "model": str(source.model_dir),
        "model_sha256": file_sha256(weights) if weights else None,
        "objective": pipe.objective, "sampler": type(pipe.scheduler).__name__, "steps": steps, "cfg": cfg,
        "cfg_channels": cfg_channels or "all", "vae": vae or source.vae_spec() or "pipeline's own",
        "seed": seed, "num_samples": num_samples, "labels": labels_mode, "num_processes": state.num_processes,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if not state.is_main_process:
        return None, None, settings
    return torch.cat(gathered).numpy(), np.asarray(labels, dtype=np.int64), settings


@torch.no_grad()
def score_model(model, vae, *, objective: str, num_samples: int, seed: int, sampler: str | None = None,
                steps: int | None = None, cfg: float = 1.0, batch_size: int = 250) -> dict[str, Any]:
    """Metrics of an in-memory model on the built-in set (used for evaluation during training)."""
    from sdtgen.diffusion.sampling import sample_latents
    from sdtgen.evaluation.metrics import compute_metrics

    labels = sample_labels(num_samples, model.config.num_classes, "balanced", seed)
    model.eval()
    chunks = []
    for start in range(0, num_samples, batch_size):
        indices = range(start, min(start + batch_size, num_samples))
        latents = sample_latents(model, torch.tensor([labels[i] for i in indices]), [sample_seed(seed, i) for i in indices],
                                 objective=objective, sampler=sampler, steps=steps, cfg=cfg)
        chunks.append(((vae.decode(latents).float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))
    return compute_metrics(torch.cat(chunks), torch.tensor(labels), reference="animals")


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    """ADM's sample-batch layout: arr_0 uint8 (N, H, W, C), arr_1 the labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    np.savez(path, **arrays)
    return path


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (uint8 NHWC) and labels from an `.npz` (arr_0 / arr_1) or a folder of PNGs named `<class>-...png`."""
    from PIL import Image

    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as data:
            if "arr_0" not in data:
                raise ValueError(f"{path} has no arr_0 images (keys: {', '.join(data.files)}).")
            return data["arr_0"], (data["arr_1"] if "arr_1" in data else None)
    if not path.is_dir():
        raise FileNotFoundError(f"--samples {path} is neither an .npz file nor a folder of PNG images.")
    files = sorted(p for p in path.glob("*.png") if p.name != "grid.png")
    if not files:
        raise FileNotFoundError(f"{path} holds no sample PNGs.")
    arrays = [np.asarray(Image.open(p)) for p in files]
    for file, array in zip(files, arrays):
        if array.shape != arrays[0].shape:
            raise ValueError(f"{file} is {_size(array)} but {files[0].name} is {_size(arrays[0])}: "
                             f"the samples in {path} must all have one size and mode.")
    images = np.stack(arrays)
    images = images[..., None] if images.ndim == 3 else images
    names = [p.name.split("-", 1)[0] for p in files]
    labels = np.asarray([int(n) for n in names]) if all(n.isdigit() for n in names) else None
    return images, labels


def _size(image: np.ndarray) -> str:
    channels = image.shape[2] if image.ndim == 3 else 1
    return f"{image.shape[1]}x{image.shape[0]} with {channels} channel{'s' * (channels > 1)}"


def check_reference(ref: str, inception_weights_path: str | None = None) -> None:
    """FileNotFoundError unless `ref` and the Inception weights it needs are there: checked before sampling."""
    if not (ref == "animals" or ref.endswith(".npz") or Path(ref).is_dir()):
        raise FileNotFoundError(f"--ref {ref} is not 'animals', an .npz reference batch, or an image folder.")
    if ref == "animals":
        return
    inception_weights(inception_weights_path)
    if not Path(ref).exists():
        raise FileNotFoundError(f"--ref {ref} does not exist.")


def reference_images(ref: str, image_size: int) -> np.ndarray:
    """uint8 NCHW images of an image-folder reference, ADM-cropped to the samples' size."""
    from sdtgen.data.folders import ImageFolderDataset

    dataset = ImageFolderDataset(ref, image_size)
    images = [((dataset[i][0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8) for i in tqdm(range(len(dataset)), desc="reference")]
    return torch.stack(images).numpy()


def inception_weights(path: str | None) -> str:
    """The Inception weights file: `path`, or torch hub's cache; a clear error if neither exists."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--inception-weights {path} does not exist.")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return str(cached)
    raise FileNotFoundError(
        f"Inception weights not found: pass --inception-weights PATH or place {INCEPTION_FILE} in {cached.parent}. "
        "Download it where there is network (torch-fidelity's release: "
        "https://github.com/toshas/torch-fidelity/releases, file " + INCEPTION_FILE + ") and copy it here."
    )


def score(images: np.ndarray, labels: np.ndarray | None, ref: str, *, inception_weights_path: str | None = None) -> dict[str, Any]:
    """Metrics of uint8 NHWC images against `ref`: `animals`, an ADM `.npz` or an image folder."""
    from sdtgen.evaluation.metrics import compute_metrics, fid_against_npz

    check_reference(ref, inception_weights_path)
    if ref == "animals":
        return compute_metrics(images, labels, reference="animals")
    weights = inception_weights(inception_weights_path)
    if ref.endswith(".npz"):
        result = fid_against_npz(images, ref, feature_extractor=INCEPTION, feature_extractor_weights_path=weights)
        with np.load(ref) as batch:
            if "arr_0" in batch:  # ADM batches hold reference images too: the other metrics need them
                full = compute_metrics(images, None, reference=batch["arr_0"], feature_extractor=INCEPTION,
                                       feature_extractor_weights_path=weights)
                full["fid"] = result["fid"]  # ADM's precomputed statistics are the reference for FID
                full["provenance"]["fid_reference"] = result["provenance"]["reference"]
                return full
        return result
    return compute_metrics(images, None, reference=reference_images(ref, images.shape[1]), feature_extractor=INCEPTION,
                           feature_extractor_weights_path=weights)


def write_metrics(out: Path, metrics: dict[str, Any], settings: dict[str, Any], ref: str) -> Path:
    """metrics.json: the numbers, then everything that made them."""
    record = {key: value for key, value in metrics.items() if key != "provenance"}
    scoring = dict(metrics.get("provenance", {}))
    scoring["metric_rng_seed"] = scoring.pop("seed", None)  # IS / KID subsets; "seed" is the sampling seed
    record["provenance"] = {**settings, **scoring, "reference_spec": ref,
                            "torch_fidelity": torch_fidelity.__version__, "torch": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    path.write_text(json.dumps(record, indent=2))
    return path

