"""`sdtgen eval`'s library: sample a pipeline at scale (or read a sample set) and score it, with provenance.

Samples are class-balanced by default (sample i has class i * K // N) or, with
`labels="uniform"`, drawn like DiT's evaluation (a label per sample from its own seed).
Every sample's noise comes from sample_seed(seed, i), so the set is the same on any
number of processes: each process samples a disjoint range of indices and the main
process gathers them, saves an ADM-style `.npz` (`arr_0` uint8 NHWC, `arr_1` labels) and
writes `metrics.json` with every setting that produced the numbers. Finding and loading
the model is the caller's; this module samples the pipeline it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from tqdm.auto import tqdm

from sdtgen.diffusion.sampling import Guidance, default_guidance, default_steps, sample_seed
from sdtgen.distributed import process_state
from sdtgen.evaluation.metrics import compute_metrics, fid_against_npz, read_npz
from sdtgen.generation import generate
from sdtgen.pipeline import SDTPipeline
from sdtgen.vae import LatentVAE

LABEL_MODES = ("balanced", "uniform")
SAMPLING_BATCH_SIZE = 250  # images per sampling batch, per process
INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
LOW_CLASS_ACCURACY = 0.85  # the accuracy every class of the built-in run should reach (docs/evaluation.md)


class InceptionWeightsNotFound(FileNotFoundError):
    """No Inception weights were given and torch hub's cache has none (they never download here).

    The message asks for the `inception_weights_path` keyword; a command line asks for its
    own option instead with `asking_for`.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        super().__init__(self.asking_for("inception_weights_path=..."))

    def asking_for(self, how: str) -> str:
        """The message, asking for the weights' path as `how` (a keyword, a command-line option)."""
        return (
            f"Inception weights not found: pass {how} or place {INCEPTION_FILE} in {self.cache_dir}. "
            f"Download it where there is network (torch-fidelity's release: "
            f"https://github.com/toshas/torch-fidelity/releases, file {INCEPTION_FILE}) and copy it here."
        )


def sample_labels(num_samples: int, num_classes: int, mode: str, seed: int) -> list[int]:
    """The class of every sample index: balanced blocks, or one uniform draw per sample seed."""
    if mode not in LABEL_MODES:
        raise ValueError(f"The label mode must be one of {', '.join(LABEL_MODES)}, got {mode!r}.")
    if mode == "balanced":
        return [i * num_classes // num_samples for i in range(num_samples)]
    return [
        int(torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(sample_seed(seed, i) ^ 0x5EED)))
        for i in range(num_samples)
    ]


def sample_eval_set(
    pipe: SDTPipeline,
    num_samples: int,
    *,
    labels_mode: str = "balanced",
    seed: int = 0,
    steps: int | None = None,
    guidance: Guidance | None = None,
    batch_size: int = SAMPLING_BATCH_SIZE,
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Sample `num_samples` images from `pipe` across all processes of the launch.

    `pipe` sits on this process's device. `steps` None is the sampler's default; `guidance`
    None is the model's `default_guidance`. Returns (images uint8 NHWC, labels, settings) on
    the main process and (None, None, settings) elsewhere; the settings record how the
    samples were made.
    """
    from accelerate.utils import gather_object

    if num_samples < 2:
        raise ValueError(f"An evaluation needs at least 2 samples, got {num_samples}.")
    state = process_state()
    steps = default_steps(pipe.scheduler) if steps is None else steps
    guidance = guidance or Guidance(default_guidance(pipe.transformer.config))
    labels = sample_labels(num_samples, pipe.transformer.config.num_classes, labels_mode, seed)
    with state.split_between_processes(list(range(num_samples))) as mine:
        images = generate(
            pipe,
            labels,
            mine,
            seed=seed,
            batch_size=batch_size,
            steps=steps,
            guidance=guidance,
            progress="sampling for eval" if state.is_main_process else None,
        )
    gathered = gather_object([images])
    settings = {
        "objective": pipe.objective,
        "sampler": type(pipe.scheduler).__name__,
        "steps": steps,
        "guidance_scale": guidance.scale,
        "guidance_channels": guidance.channels or "all",
        "guidance_interval": list(guidance.interval),
        "seed": seed,
        "num_samples": num_samples,
        "labels": labels_mode,
        "num_processes": state.num_processes,
        "dtype": str(pipe.transformer.dtype).removeprefix("torch."),
    }
    if not state.is_main_process:
        return None, None, settings
    return torch.cat(gathered).permute(0, 2, 3, 1).contiguous().numpy(), np.asarray(labels, dtype=np.int64), settings


@torch.no_grad()
def score_model(
    model,
    vae: LatentVAE,
    *,
    objective: str,
    num_samples: int,
    seed: int,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: Guidance | None = None,
    batch_size: int = SAMPLING_BATCH_SIZE,
) -> dict[str, Any]:
    """FID and class accuracy (overall, per class) of an in-memory model on the built-in set, as evaluations during
    training print them; IS, KID and precision/recall are None (`sdtgen eval` gives them). `guidance` None: the
    model's `default_guidance` everywhere.
    """
    labels = sample_labels(num_samples, model.config.num_classes, "balanced", seed)
    model.eval()
    pipe = SDTPipeline.from_model(model, vae, objective=objective, sampler=sampler)
    guidance = guidance or Guidance(default_guidance(model.config))
    images = generate(
        pipe, labels, range(num_samples), seed=seed, batch_size=batch_size, steps=steps, guidance=guidance
    )
    return compute_metrics(images, torch.tensor(labels), reference="animals", fid_and_accuracy_only=True)


def save_npz(path: Path, images: np.ndarray, labels: np.ndarray | None) -> Path:
    """ADM's sample-batch layout: arr_0 uint8 (N, H, W, C), arr_1 the labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    np.savez(path, **arrays)
    return path


def load_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (uint8 NHWC) and labels from an `.npz` (arr_0 / arr_1) or a folder of PNGs named `<class>-...png`."""
    path = Path(path)
    if path.suffix == ".npz" and path.is_file():
        arrays, names = read_npz(path, ("arr_0", "arr_1"))
        if "arr_0" not in arrays:
            raise ValueError(f"{path} has no arr_0 images (keys: {', '.join(names)}).")
        return arrays["arr_0"], arrays.get("arr_1")
    if not path.is_dir():
        raise FileNotFoundError(f"The sample set {path} is neither an .npz file nor a folder of PNG images.")
    files = sorted(p for p in path.glob("*.png") if p.name != "grid.png")
    if not files:
        raise FileNotFoundError(f"{path} holds no sample PNGs.")
    arrays = [_read_png(p) for p in files]
    for file, array in zip(files, arrays):
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"{file} is {_size(array)} but {files[0].name} is {_size(arrays[0])}: "
                f"the samples in {path} must all have one size and mode."
            )
    images = np.stack(arrays)
    images = images[..., None] if images.ndim == 3 else images
    names = [p.name.split("-", 1)[0] for p in files]
    labels = np.asarray([int(n) for n in names]) if all(n.isdigit() for n in names) else None
    return images, labels


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise ValueError(f"{path} is not a readable image ({error}); remove it from the sample folder.") from None


def _size(image: np.ndarray) -> str:
    channels = image.shape[2] if image.ndim == 3 else 1
    return f"{image.shape[1]}x{image.shape[0]} with {channels} channel{'s' * (channels > 1)}"


def check_reference(ref: str, inception_weights_path: str | None = None) -> None:
    """Checked before sampling: ValueError for an unknown kind of reference, FileNotFoundError for missing files."""
    if not (ref == "animals" or ref.endswith(".npz") or Path(ref).is_dir()):
        raise ValueError(f"The reference {ref} is not 'animals', an .npz reference batch, or an image folder.")
    if ref == "animals":
        return
    inception_weights(inception_weights_path)
    if not Path(ref).exists():
        raise FileNotFoundError(f"The reference {ref} does not exist.")


def reference_images(ref: str, image_size: int) -> np.ndarray:
    """uint8 NCHW images of an image-folder reference, ADM-cropped to the samples' size."""
    from sdtgen.data.folders import ImageFolderDataset

    dataset = ImageFolderDataset(ref, image_size)
    images = [
        ((dataset[i][0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        for i in tqdm(range(len(dataset)), desc="reference")
    ]
    return torch.stack(images).numpy()


def inception_weights(path: str | None) -> str:
    """The Inception weights file: `path`, or torch hub's cache; InceptionWeightsNotFound if neither is given."""
    if path:
        if not Path(path).is_file():
            raise FileNotFoundError(f"The Inception weights file {path} does not exist.")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return str(cached)
    raise InceptionWeightsNotFound(cached.parent)


def score(
    images: np.ndarray, labels: np.ndarray | None, ref: str, *, inception_weights_path: str | None = None
) -> dict[str, Any]:
    """Metrics of uint8 NHWC images against `ref`: `animals`, an ADM `.npz` or an image folder."""
    check_reference(ref, inception_weights_path)
    if ref == "animals":
        return compute_metrics(images, labels, reference="animals")
    weights = inception_weights(inception_weights_path)
    if ref.endswith(".npz"):
        reference = read_npz(ref, ("arr_0",))[0].get("arr_0")
        if reference is None:  # statistics only: FID is all there is
            return fid_against_npz(images, ref, feature_extractor=INCEPTION, feature_extractor_weights_path=weights)
        # ADM batches hold reference images too, for the other metrics; FID takes the precomputed statistics.
        return compute_metrics(
            images,
            None,
            reference=reference,
            feature_extractor=INCEPTION,
            feature_extractor_weights_path=weights,
            fid_statistics=ref,
        )
    return compute_metrics(
        images,
        None,
        reference=reference_images(ref, images.shape[1]),
        feature_extractor=INCEPTION,
        feature_extractor_weights_path=weights,
    )


def write_metrics(out: Path, metrics: dict[str, Any], settings: dict[str, Any], ref: str) -> Path:
    """metrics.json: the numbers, then everything that made them."""
    record = {key: value for key, value in metrics.items() if key != "provenance"}
    scoring = dict(metrics.get("provenance", {}))
    scoring["metric_rng_seed"] = scoring.pop("seed", None)  # IS / KID subsets; "seed" is the sampling seed
    record["provenance"] = {
        **settings,
        **scoring,
        "reference_spec": ref,
        "torch_fidelity": torch_fidelity.__version__,
        "torch": torch.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def class_accuracy_lines(per_class: dict[str, float]) -> list[str]:
    """Two printable lines: every class's accuracy in the order given, those below LOW_CLASS_ACCURACY
    marked `!`; then those classes named worst first (or a line saying there are none)."""
    marked = [f"{name} {accuracy:.0%}{' !' * (accuracy < LOW_CLASS_ACCURACY)}" for name, accuracy in per_class.items()]
    low = sorted((accuracy, name) for name, accuracy in per_class.items() if accuracy < LOW_CLASS_ACCURACY)
    if low:
        worst = ", ".join(f"{name} {accuracy:.0%}" for accuracy, name in low)
        verdict = (
            f"! = below {LOW_CLASS_ACCURACY:.0%}, the per-class target (the classifier takes more than "
            f"{1 - LOW_CLASS_ACCURACY:.0%} of their samples for another class); worst first: {worst}"
        )
    else:
        verdict = f"Every class reaches {LOW_CLASS_ACCURACY:.0%}, the per-class target."
    return [f"Class accuracy per class: {' · '.join(marked)}", verdict]
