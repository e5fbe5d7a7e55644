"""FID, IS, KID, precision/recall and class accuracy of generated images, with provenance.

Features come from a torch-fidelity feature extractor (default: sdtgen's built-in
``sdtgen-animals`` network) and all metric math is torch-fidelity's; this module only
wraps image tensors as torch-fidelity inputs, caches the reference features of the
built-in dataset on disk, and records what produced each number (see ``provenance``).

Scoring is two steps: the reference's features, then the metrics of the samples' features
against them (:func:`metrics_from_features`, which sees no image). A reference is

- ``"animals"``, the built-in training split, whose features are cached under a
  fingerprint of the extractor weights and the data (:func:`builtin_reference_features`);
- uint8 reference images (:func:`reference_features` resolves either);
- a reference batch ``.npz`` holding precomputed ``mu`` and ``sigma`` (ADM's ImageNet
  batches, :func:`load_npz_statistics`), from which only FID can be computed
  (:func:`fid_against_npz`). ADM's batches also hold reference images:
  ``compute_metrics(..., fid_statistics=npz)`` takes FID from the statistics and the other
  metrics from the images, extracting each set's features once.

:func:`compute_metrics` does both steps from images.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import kid_features_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from sdtgen.data.animals import ANIMAL_CLASSES, load_animals
from sdtgen.data.latents.format import file_sha256
from sdtgen.evaluation import feature_net

logger = logging.getLogger(__name__)

BUILTIN_REFERENCE = "animals"
DEFAULT_KID_SUBSET_SIZE = 1000
KID_SUBSETS = 100
PRC_NEIGHBORHOOD = 3
ISC_SPLITS = 10
_PRC_BATCH = 2048  # bounds the distance matrices precision/recall hold at once


class ImageTensorDataset(Dataset):
    """uint8 images (N, C, H, W) as a torch-fidelity input: each item is (3, H, W) uint8."""

    def __init__(self, images: torch.Tensor) -> None:
        # torch-fidelity's extractors expect RGB; gray images are repeated, not converted.
        self.images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def to_nchw_uint8(images: torch.Tensor | np.ndarray | list) -> torch.Tensor:
    """Validate uint8 images, NCHW or NHWC with 1 or 3 channels (or a list of PIL images); return them NCHW.

    Float images are refused with the conversion to make: metrics need the rounding every
    saved sample gets, and a float in [0, 1] or [-1, 1] read as 0..255 would score black images.
    """
    if isinstance(images, (list, tuple)) and images and all(isinstance(image, Image.Image) for image in images):
        images = np.stack([np.asarray(image) for image in images])  # a pipeline's output_type='pil'
        images = images[..., None] if images.ndim == 3 else images  # gray: (N, H, W) -> NHWC
    try:
        images = torch.as_tensor(images)
    except (TypeError, RuntimeError, ValueError):
        raise ValueError(
            f"images must be a uint8 array (N, C, H, W) or (N, H, W, C) or a list of PIL images, got {type(images).__name__}."
        ) from None
    if images.is_floating_point():
        low, high = (float(v) for v in images.aminmax()) if images.numel() else (0.0, 0.0)
        convert = "(images * 255).round()" if low >= 0 and high <= 1 else "((images + 1) * 127.5).round()"
        raise ValueError(
            f"images must be uint8 0..255, got {images.dtype} values in [{low:.4g}, {high:.4g}]; convert them with "
            f"{convert}.clamp(0, 255).to(torch.uint8), or sample with output_type='pil'."
        )
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"images must be a non-empty uint8 array (N, C, H, W) or (N, H, W, C), "
            f"got {images.dtype} {tuple(images.shape)}."
        )
    if images.shape[1] in (1, 3):
        return images
    if images.shape[-1] in (1, 3):
        return images.permute(0, 3, 1, 2)
    raise ValueError(f"images need 1 or 3 channels first or last, got shape {tuple(images.shape)}.")


def read_npz(path: str | Path, names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays `names` of an .npz file that holds them, and the names of all it holds.

    ValueError saying so if the file is not a readable .npz (a truncated download, another
    format); object arrays are refused, as numpy refuses to unpickle them.
    """
    try:
        with np.load(path) as batch:
            return {name: batch[name] for name in names if name in batch}, list(batch.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise ValueError(f"{path} is not a readable .npz file ({reason}); write or download it again.") from None


def extract_features(
    images: torch.Tensor, feature_extractor: str, features: list[str], batch_size: int = 256, **extractor_kwargs: Any
) -> dict[str, torch.Tensor]:
    """Features ``{name: (N, D) float tensor}`` of uint8 NCHW ``images``, via torch-fidelity."""
    _check_extractor(feature_extractor)
    cuda = torch.cuda.is_available()
    try:
        extractor = create_feature_extractor(feature_extractor, features, cuda=cuda, verbose=False, **extractor_kwargs)
    except (RuntimeError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
        weights = extractor_kwargs.get("feature_extractor_weights_path") or "its weights file"
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise OSError(
            f"Could not load the feature extractor {feature_extractor!r}: {weights} is unreadable or corrupt ({reason}); "
            "fetch the file again."
        ) from None
    # save_cpu_ram=True keeps torch-fidelity from spawning DataLoader workers for tensors.
    return get_featuresdict_from_dataset(
        ImageTensorDataset(images), extractor, batch_size, cuda, save_cpu_ram=True, verbose=False
    )


def extractor_weights_sha256(feature_extractor: str, weights_path: str | None = None) -> str | None:
    """sha256 of the weights behind ``feature_extractor``; None when torch-fidelity downloads them."""
    if feature_extractor == feature_net.EXTRACTOR_NAME:
        return feature_net.weights_sha256(Path(weights_path) if weights_path else None)
    if weights_path is None:
        return None
    return hashlib.sha256(Path(weights_path).read_bytes()).hexdigest()


def default_cache_dir() -> Path:
    """Where reference features are cached: $SDTGEN_CACHE_DIR or ~/.cache/sdtgen."""
    return Path(os.environ.get("SDTGEN_CACHE_DIR", Path.home() / ".cache" / "sdtgen")) / "reference"


def builtin_reference_features(
    feature_extractor: str,
    feature: str,
    weights_sha256: str | None,
    cache_dir: Path | None = None,
    **extractor_kwargs: Any,
) -> tuple[torch.Tensor, str]:
    """Features of the animals training split, and a description; computed once, then cached.

    The cache file name holds a fingerprint of the extractor (name, weights hash, feature)
    and of the image bytes, so new weights or data never reuse stale features.
    """
    images, _ = load_animals("train")
    data_sha = hashlib.sha256(images.numpy().tobytes()).hexdigest()
    key = hashlib.sha256(f"{feature_extractor}|{weights_sha256}|{feature}|{data_sha}".encode()).hexdigest()
    path = Path(cache_dir or default_cache_dir()) / f"animals-train-{feature_extractor}-{key[:16]}.safetensors"
    reference = _cached_features(path)
    if reference is None:
        reference = extract_features(images, feature_extractor, [feature], **extractor_kwargs)[feature]
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(
            {"features": reference.contiguous()},
            str(path),
            metadata={"data_sha256": data_sha, "weights_sha256": str(weights_sha256)},
        )
    return reference, f"animals train split ({len(images)} images, pixels sha256 {data_sha[:16]})"


def _cached_features(path: Path) -> torch.Tensor | None:
    """The features cached in `path`; None if there are none, or they are unreadable (then computed again)."""
    if not path.is_file():
        return None
    try:
        return load_file(path)["features"]
    except (OSError, KeyError, SafetensorError) as error:
        logger.warning("the cached reference features %s are unreadable (%s); computing them again", path, error)
        return None


def _check_extractor(feature_extractor: str) -> None:
    feature_net.register()
    if feature_extractor not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(
            f"unknown feature extractor {feature_extractor!r}; known: {', '.join(sorted(FEATURE_EXTRACTORS_REGISTRY))}"
        )


def _default_layer(feature_extractor: str, metric: str) -> str:
    _check_extractor(feature_extractor)
    return FEATURE_EXTRACTORS_REGISTRY[feature_extractor].get_default_feature_layer_for_metric(metric)


def _check_labels(labels: torch.Tensor | np.ndarray, num_samples: int) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"sample_labels must be integer class ids, got {labels.dtype}.")
    labels = labels.long()
    if labels.shape != (num_samples,):
        raise ValueError(f"sample_labels must have shape ({num_samples},), got {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(ANIMAL_CLASSES)):
        raise ValueError(f"sample_labels must lie in [0, {len(ANIMAL_CLASSES)}), got [{labels.min()}, {labels.max()}]")
    return labels


def per_class_accuracy(correct: torch.Tensor, labels: torch.Tensor) -> tuple[dict[str, float], dict[str, int]]:
    """Accuracy and sample count of each class present in ``labels``, keyed by the built-in set's class names.

    ``correct``: whether the classifier assigned sample i its label ``labels[i]``. Returns
    ``({name: accuracy}, {name: number of samples})``, both in class-id order; classes
    with no sample are left out (an accuracy of nothing is not 0).
    """
    counts = torch.bincount(labels, minlength=len(ANIMAL_CLASSES))
    hits = torch.bincount(labels, weights=correct.double(), minlength=len(ANIMAL_CLASSES))
    present = counts.nonzero().flatten().tolist()
    accuracy = {ANIMAL_CLASSES[c]: hits[c].item() / counts[c].item() for c in present}
    return accuracy, {ANIMAL_CLASSES[c]: int(counts[c]) for c in present}


def reference_features(
    reference: str | torch.Tensor | np.ndarray,
    feature_extractor: str,
    feature: str,
    weights_sha256: str | None,
    cache_dir: Path | None = None,
    **extractor_kwargs: Any,
) -> tuple[torch.Tensor, str]:
    """Features ``feature`` (M, D) of ``reference`` and a description of it.

    ``reference``: ``"animals"`` (the built-in training split, see
    :func:`builtin_reference_features`) or uint8 images, NCHW or NHWC.
    """
    if isinstance(reference, str):
        if reference != BUILTIN_REFERENCE:
            raise ValueError(f"unknown reference {reference!r}; use {BUILTIN_REFERENCE!r} or uint8 images")
        return builtin_reference_features(feature_extractor, feature, weights_sha256, cache_dir, **extractor_kwargs)
    images = to_nchw_uint8(reference)
    features = extract_features(images, feature_extractor, [feature], **extractor_kwargs)[feature]
    return features, f"{len(images)} user-supplied images"


def compute_metrics(
    samples: torch.Tensor | np.ndarray,
    sample_labels: torch.Tensor | np.ndarray | None = None,
    reference: str | torch.Tensor | np.ndarray = BUILTIN_REFERENCE,
    feature_extractor: str = feature_net.EXTRACTOR_NAME,
    kid_subset_size: int | None = None,
    seed: int = 2020,
    cache_dir: Path | None = None,
    feature_extractor_weights_path: str | None = None,
    fid_statistics: str | Path | None = None,
    fid_and_accuracy_only: bool = False,
) -> dict[str, Any]:
    """FID, IS, KID, precision/recall (and class accuracy) of ``samples`` against ``reference``.

    ``samples``: uint8 images, NCHW or NHWC. ``sample_labels``: the class each sample was
    generated for; gives ``class_accuracy`` (fraction the built-in classifier assigns to
    that class), which only the built-in extractor can judge. ``reference``: ``"animals"``
    (training split, cached features) or uint8 images. ``fid_statistics``: a reference
    batch ``.npz`` whose precomputed ``mu``/``sigma`` are FID's reference instead of
    ``reference`` (see :func:`fid_against_npz`). ``kid_subset_size``, ``seed`` and
    ``fid_and_accuracy_only``: see :func:`metrics_from_features`, which computes the numbers
    from the features extracted here. Returns its metrics, with the ``provenance`` of the
    extractor and the reference added.
    """
    samples = to_nchw_uint8(samples)
    npz = None if fid_statistics is None else load_npz_statistics(fid_statistics)
    labels = None if sample_labels is None else _check_labels(sample_labels, len(samples))
    layer = _default_layer(feature_extractor, "fid")
    logits_layer = _default_layer(feature_extractor, "isc")
    kwargs = {"feature_extractor_weights_path": feature_extractor_weights_path}
    weights_sha = extractor_weights_sha256(feature_extractor, feature_extractor_weights_path)
    reference, description = reference_features(reference, feature_extractor, layer, weights_sha, cache_dir, **kwargs)
    features = extract_features(samples, feature_extractor, sorted({layer, logits_layer}), **kwargs)
    if npz is not None:
        _check_dimension(npz, features[layer], feature_extractor, layer)
    scores = metrics_from_features(
        features[layer],
        features[logits_layer],
        reference,
        labels if feature_extractor == feature_net.EXTRACTOR_NAME else None,  # only its logits are of these classes
        kid_subset_size=kid_subset_size,
        seed=seed,
        fid_statistics=npz,
        fid_and_accuracy_only=fid_and_accuracy_only,
    )
    scores["provenance"] = {
        **_extractor_provenance(feature_extractor, weights_sha, layer, len(samples)),
        "isc_feature": logits_layer,
        "reference": description,
        **scores["provenance"],
    }
    return scores


def metrics_from_features(
    features: torch.Tensor,
    logits: torch.Tensor,
    reference: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    kid_subset_size: int | None = None,
    seed: int = 2020,
    fid_statistics: NpzStatistics | None = None,
    fid_and_accuracy_only: bool = False,
) -> dict[str, Any]:
    """FID, IS, KID, precision/recall and class accuracy of generated features against reference features.

    ``features`` (N, D): the samples' features of FID's layer, which KID and precision/recall
    use too; ``reference`` (M, D): the reference's, of the same layer; ``logits`` (N, K): the
    samples' features of IS's layer. ``labels`` (N,): integer class ids of the built-in set,
    given only when ``logits`` are the built-in classifier's: ``class_accuracy`` is the
    fraction of samples whose largest logit is their class, ``class_accuracy_per_class`` and
    ``class_counts`` that of each class (see :func:`per_class_accuracy`); all three are None
    without labels. ``kid_subset_size`` defaults to min(1000, N, M). ``seed`` fixes IS's
    shuffle and KID's subsets. ``fid_statistics``: precomputed D-dimensional statistics that
    are FID's reference instead of ``reference``. ``fid_and_accuracy_only`` leaves IS, KID and
    precision/recall out (None): evaluations during training print FID and class accuracy
    alone, and precision/recall's nearest neighbours among 9,000 reference images cost more
    than the rest together. Returns ``fid``, ``is``, ``is_std``, ``kid``, ``kid_std``,
    ``precision``, ``recall``, the three class accuracies, and the settings chosen here as
    ``provenance``.
    """
    subset = kid_subset_size or min(DEFAULT_KID_SUBSET_SIZE, len(features), len(reference))
    if not 1 < subset <= min(len(features), len(reference)):
        raise ValueError(
            f"kid_subset_size must be in [2, {min(len(features), len(reference))}] (the smaller set size), got {subset}"
        )
    if fid_statistics is None:
        fid = fid_statistics_to_metric(
            fid_features_to_statistics(features), fid_features_to_statistics(reference), verbose=False
        )
    else:
        fid = _fid_against_statistics(features, fid_statistics)
    splits = min(ISC_SPLITS, len(features))  # torch-fidelity returns NaN for a split with no sample
    extras = dict.fromkeys(("is", "is_std", "kid", "kid_std", "precision", "recall"))
    if not fid_and_accuracy_only:
        isc = isc_features_to_metric(logits, splits=splits, rng_seed=seed)
        kid = kid_features_to_metric(
            features, reference, kid_subsets=KID_SUBSETS, kid_subset_size=subset, rng_seed=seed, verbose=False
        )
        # torch-fidelity's convention: input 1 is generated, input 2 is real.
        prc = prc_features_to_metric(
            features,
            reference,
            prc_neighborhood=PRC_NEIGHBORHOOD,
            prc_batch_size=_PRC_BATCH,
            save_cpu_ram=True,
            verbose=False,
        )
        extras = {
            "is": isc["inception_score_mean"],
            "is_std": isc["inception_score_std"],
            "kid": kid["kernel_inception_distance_mean"],
            "kid_std": kid["kernel_inception_distance_std"],
            "precision": prc["precision"],
            "recall": prc["recall"],
        }

    class_accuracy = per_class = class_counts = None
    if labels is not None:
        correct = logits.argmax(dim=1) == labels
        class_accuracy = correct.float().mean().item()
        per_class, class_counts = per_class_accuracy(correct, labels)

    provenance = {
        "num_reference": len(reference),
        "kid_subset_size": subset,
        "kid_subsets": KID_SUBSETS,
        "isc_splits": splits,
        "prc_neighborhood": PRC_NEIGHBORHOOD,
        "seed": seed,
    }
    if fid_statistics is not None:
        provenance["fid_reference"] = fid_statistics.description
    return {
        "fid": fid["frechet_inception_distance"],
        **extras,
        "class_accuracy": class_accuracy,
        "class_accuracy_per_class": per_class,
        "class_counts": class_counts,
        "provenance": provenance,
    }


@dataclass(frozen=True)
class NpzStatistics:
    """The precomputed FID statistics of a reference batch, as float64, and where they come from."""

    path: Path
    mu: np.ndarray
    sigma: np.ndarray
    description: str


def load_npz_statistics(npz_path: str | Path) -> NpzStatistics:
    """The ``mu``/``sigma`` of a reference batch ``.npz``; FileNotFoundError / ValueError if it has none."""
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise FileNotFoundError(f"reference batch not found: {npz_path}")
    arrays, names = read_npz(npz_path, ("mu", "sigma"))
    if len(arrays) < 2:
        raise ValueError(f"{npz_path} holds no 'mu'/'sigma' statistics (keys: {', '.join(names)})")
    mu, sigma = arrays["mu"].astype(np.float64), arrays["sigma"].astype(np.float64)
    digest = file_sha256(npz_path)
    return NpzStatistics(npz_path, mu, sigma, f"precomputed mu/sigma of {npz_path.name} (sha256 {digest[:16]})")


def _check_dimension(npz: NpzStatistics, features: torch.Tensor, feature_extractor: str, layer: str) -> None:
    """ValueError unless the statistics of ``npz`` have the dimension of ``features`` (``layer`` of the extractor)."""
    if features.shape[1] != npz.mu.shape[0]:
        raise ValueError(
            f"{npz.path} has {npz.mu.shape[0]}-d statistics but {feature_extractor!r} "
            f"gives {features.shape[1]}-d {layer!r} features"
        )


def _fid_against_statistics(features: torch.Tensor, npz: NpzStatistics) -> dict[str, Any]:
    """torch-fidelity's FID result for ``features`` against the statistics of ``npz``."""
    statistics = {key: value.astype(np.float64) for key, value in fid_features_to_statistics(features).items()}
    return fid_statistics_to_metric(statistics, {"mu": npz.mu, "sigma": npz.sigma}, verbose=False)


def fid_against_npz(
    samples: torch.Tensor | np.ndarray,
    npz_path: str | Path,
    feature_extractor: str = "inception-v3-compat",
    feature_extractor_weights_path: str | None = None,
) -> dict[str, Any]:
    """FID of ``samples`` against the precomputed ``mu``/``sigma`` of a reference ``.npz``.

    Built for ADM's reference batches (e.g. VIRTUAL_imagenet256_labeled.npz), whose
    statistics come from the 2048-d pool features of TF-Inception, which
    ``inception-v3-compat`` reproduces; any extractor whose FID feature has the npz's
    dimension works.
    """
    npz = load_npz_statistics(npz_path)
    samples = to_nchw_uint8(samples)
    layer = _default_layer(feature_extractor, "fid")
    features = extract_features(
        samples, feature_extractor, [layer], feature_extractor_weights_path=feature_extractor_weights_path
    )[layer]
    _check_dimension(npz, features, feature_extractor, layer)
    fid = _fid_against_statistics(features, npz)["frechet_inception_distance"]
    weights_sha = extractor_weights_sha256(feature_extractor, feature_extractor_weights_path)
    return {
        "fid": fid,
        "provenance": {
            **_extractor_provenance(feature_extractor, weights_sha, layer, len(samples)),
            "reference": npz.description,
        },
    }


def _extractor_provenance(
    feature_extractor: str, weights_sha256: str | None, feature: str, num_samples: int
) -> dict[str, Any]:
    return {
        "feature_extractor": feature_extractor,
        "feature_extractor_weights_sha256": weights_sha256,
        "feature": feature,
        "torch_fidelity_version": torch_fidelity.__version__,
        "num_samples": num_samples,
    }
