"""Correctness of sdtgen.evaluation: the built-in feature network and the metric wrappers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import linalg
from torch_fidelity import calculate_metrics, register_feature_extractor
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from sdtgen.data.animals import ANIMAL_CLASSES, load_animals
from sdtgen.evaluation import EXTRACTOR_NAME, compute_metrics, fid_against_npz, load_feature_net
from sdtgen.evaluation.feature_net import default_weights_dir, uint8_to_unit_range, weights_sha256
from sdtgen.evaluation.metrics import (
    ImageTensorDataset,
    builtin_reference_features,
    extract_features,
    metrics_from_features,
    reference_features,
)

STAND_IN = "sdtgen-test-pooled-pixels"


class PooledPixels(FeatureExtractorBase):
    """Stand-in extractor: 4x4 average-pooled gray pixels (16-d), no weights."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)  # torch-fidelity passes all its kwargs along

    @staticmethod
    def get_provided_features_list():
        return ("pooled",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "pooled"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, images):
        gray = images.float().mean(dim=1, keepdim=True) / 255.0
        return (torch.nn.functional.adaptive_avg_pool2d(gray, 4).flatten(1),)


if STAND_IN not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(STAND_IN, PooledPixels)


def frechet_scipy(features_1: np.ndarray, features_2: np.ndarray) -> float:
    """FID written independently of torch-fidelity, with scipy's matrix square root."""
    mu_1, mu_2 = features_1.mean(0), features_2.mean(0)
    sigma_1, sigma_2 = np.cov(features_1, rowvar=False), np.cov(features_2, rowvar=False)
    return closed_form(mu_1, sigma_1, mu_2, sigma_2)


def closed_form(mu_1, sigma_1, mu_2, sigma_2) -> float:
    covmean = linalg.sqrtm(sigma_1 @ sigma_2).real
    return float(((mu_1 - mu_2) ** 2).sum() + np.trace(sigma_1 + sigma_2 - 2 * covmean))


@pytest.fixture(scope="module")
def test_split():
    return load_animals("test")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("reference-cache")


@pytest.fixture(scope="module")
def real_test_metrics(test_split, cache_dir):
    images, labels = test_split
    return compute_metrics(images, labels, cache_dir=cache_dir)


def test_frechet_distance_equals_closed_form_for_gaussians():
    rng = np.random.default_rng(0)
    dim = 6
    mu_1, mu_2 = rng.normal(size=dim), rng.normal(size=dim)
    a, b = rng.normal(size=(dim, dim)), rng.normal(size=(dim, dim))
    sigma_1, sigma_2 = a @ a.T + 0.1 * np.eye(dim), b @ b.T + 0.1 * np.eye(dim)
    fid = fid_statistics_to_metric({"mu": mu_1, "sigma": sigma_1}, {"mu": mu_2, "sigma": sigma_2}, verbose=False)[
        "frechet_inception_distance"
    ]
    assert fid == pytest.approx(closed_form(mu_1, sigma_1, mu_2, sigma_2), rel=1e-8)

    # Diagonal covariances commute: FID = |m1 - m2|^2 + sum (sqrt(s1) - sqrt(s2))^2 exactly.
    s_1, s_2 = rng.uniform(0.5, 2.0, dim), rng.uniform(0.5, 2.0, dim)
    fid = fid_statistics_to_metric(
        {"mu": mu_1, "sigma": np.diag(s_1)}, {"mu": mu_2, "sigma": np.diag(s_2)}, verbose=False
    )["frechet_inception_distance"]
    expected = ((mu_1 - mu_2) ** 2).sum() + ((np.sqrt(s_1) - np.sqrt(s_2)) ** 2).sum()
    assert fid == pytest.approx(expected, rel=1e-8)


def test_shipped_weights_reach_97_percent_on_test_split(test_split):
    images, labels = test_split
    with torch.no_grad():
        _, logits = load_feature_net()(uint8_to_unit_range(images))
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    report = json.loads((default_weights_dir() / "training_report.json").read_text())
    assert accuracy >= 0.97
    assert accuracy == pytest.approx(report["test_accuracy"], abs=1e-3)
    assert report["weights_sha256"] == weights_sha256()
    assert (default_weights_dir() / "diffusion_pytorch_model.safetensors").stat().st_size < 2 * 2**20


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU units: singular covariances
def test_fid_equals_scipy_on_same_features(test_split, real_test_metrics, cache_dir):
    images, _ = test_split
    samples = extract_features(images, EXTRACTOR_NAME, ["penultimate"])["penultimate"]
    reference, _ = builtin_reference_features(EXTRACTOR_NAME, "penultimate", weights_sha256(), cache_dir)
    expected = frechet_scipy(samples.double().numpy(), reference.double().numpy())
    assert real_test_metrics["fid"] == pytest.approx(expected, rel=1e-4)


def test_fid_and_accuracy_only_gives_the_same_fid_and_accuracy(test_split, real_test_metrics, cache_dir):
    images, labels = test_split
    quick = compute_metrics(images, labels, cache_dir=cache_dir, fid_and_accuracy_only=True)
    for key in ("fid", "class_accuracy", "class_accuracy_per_class", "class_counts"):
        assert quick[key] == real_test_metrics[key]
    assert all(quick[key] is None for key in ("is", "is_std", "kid", "kid_std", "precision", "recall"))


def test_real_test_split_scores_well(real_test_metrics):
    metrics = real_test_metrics
    report = json.loads((default_weights_dir() / "training_report.json").read_text())
    assert metrics["fid"] < 5.0
    assert 8.0 < metrics["is"] <= 10.0  # 10 classes, confident classifier
    assert metrics["class_accuracy"] == pytest.approx(report["test_accuracy"], abs=2e-3)
    assert metrics["precision"] > 0.7 and metrics["recall"] > 0.7
    # KID's cubic kernel is not scale-free: with these features (norm ~18) noise scores ~900.
    assert abs(metrics["kid"]) < 0.1
    provenance = metrics["provenance"]
    assert provenance["feature_extractor"] == EXTRACTOR_NAME
    assert provenance["feature_extractor_weights_sha256"] == weights_sha256()
    assert provenance["num_samples"] == 1000 and provenance["num_reference"] == 9000
    assert provenance["torch_fidelity_version"] and "animals train split" in provenance["reference"]


def brute_force_per_class(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Each class's accuracy, counted sample by sample from the classifier's predictions."""
    predicted = extract_features(images, EXTRACTOR_NAME, ["logits_unbiased"])["logits_unbiased"].argmax(1)
    hits, counts = {}, {}
    for label, guess in zip(labels.tolist(), predicted.tolist()):
        name = ANIMAL_CLASSES[label]
        counts[name] = counts.get(name, 0) + 1
        hits[name] = hits.get(name, 0) + (guess == label)
    return {name: hits[name] / counts[name] for name in counts}


def test_per_class_accuracy_counts_each_class_alone(test_split, real_test_metrics):
    images, labels = test_split
    per_class = real_test_metrics["class_accuracy_per_class"]
    assert list(per_class) == list(ANIMAL_CLASSES)  # every class, in class-id order
    assert real_test_metrics["class_counts"] == dict.fromkeys(ANIMAL_CLASSES, 100)
    assert per_class == pytest.approx(brute_force_per_class(images, labels), abs=1e-12)
    assert sum(per_class.values()) / 10 == pytest.approx(real_test_metrics["class_accuracy"], abs=1e-6)

    # Bear silhouettes asked for as birds, and no cats: bird falls to the share of bears taken for
    # birds, cat is left out rather than scored 0, and every other class keeps its accuracy.
    bear, bird, cat = (ANIMAL_CLASSES.index(name) for name in ("bear", "bird", "cat"))
    swapped = images.clone()
    swapped[labels == bird] = images[labels == bear]
    kept = labels != cat
    metrics = compute_metrics(swapped[kept], labels[kept], reference=images[::10])  # a small reference: fast
    after = metrics["class_accuracy_per_class"]
    assert list(after) == [name for name in ANIMAL_CLASSES if name != "cat"]
    assert metrics["class_counts"] == {name: 100 for name in after}
    assert after == pytest.approx(brute_force_per_class(swapped[kept], labels[kept]), abs=1e-12)
    assert after["bird"] <= 0.05
    for name in after:
        if name != "bird":  # a different batching may flip a near-tie: one sample is 0.01
            assert after[name] == pytest.approx(per_class[name], abs=0.011), name

    unlabelled = compute_metrics(images[:20], reference=images[20:40])
    assert unlabelled["class_accuracy"] is unlabelled["class_accuracy_per_class"] is unlabelled["class_counts"] is None


def test_metrics_are_a_function_of_features_alone(test_split):
    """compute_metrics is the reference's features, the samples' features, and metrics_from_features of both."""
    images, labels = test_split
    samples, reference = images[::5], images[1::5]
    wrapped = compute_metrics(samples, labels[::5], reference=reference, kid_subset_size=100)
    features = extract_features(samples, EXTRACTOR_NAME, ["logits_unbiased", "penultimate"])
    ref, description = reference_features(reference, EXTRACTOR_NAME, "penultimate", weights_sha256())
    direct = metrics_from_features(
        features["penultimate"], features["logits_unbiased"], ref, labels[::5], kid_subset_size=100
    )
    assert direct.pop("provenance").items() <= wrapped.pop("provenance").items()
    assert direct == wrapped and description == "200 user-supplied images"


def test_noise_scores_badly(real_test_metrics, cache_dir):
    noise = torch.randint(0, 256, (300, 32, 32, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    metrics = compute_metrics(noise, torch.zeros(300, dtype=torch.long), cache_dir=cache_dir)
    assert metrics["fid"] > 20 * max(real_test_metrics["fid"], 1.0)
    assert metrics["kid"] > 100 * max(abs(real_test_metrics["kid"]), 1.0)
    assert metrics["precision"] < 0.1


def test_reference_features_are_cached_under_a_fingerprint(real_test_metrics, cache_dir):
    files = list(cache_dir.glob("*.safetensors"))
    assert len(files) == 1  # the earlier tests computed the train features once
    before = files[0].stat().st_mtime_ns
    builtin_reference_features(EXTRACTOR_NAME, "penultimate", weights_sha256(), cache_dir)
    assert files[0].stat().st_mtime_ns == before
    # Other weights mean another fingerprint, hence another file (the stand-in is cheap).
    builtin_reference_features(STAND_IN, "pooled", None, cache_dir)
    assert len(list(cache_dir.glob("*.safetensors"))) == 2


def test_torch_fidelity_calculate_metrics_uses_the_registered_extractor(test_split):
    images, _ = test_split
    train, _ = load_animals("train")
    samples, reference = images[:300], train[::30]
    ours = calculate_metrics(
        input1=ImageTensorDataset(samples),
        input2=ImageTensorDataset(reference),
        feature_extractor=EXTRACTOR_NAME,
        fid=True,
        isc=True,
        kid=True,
        prc=True,
        kid_subset_size=100,
        cuda=False,
        verbose=False,
        save_cpu_ram=True,
    )
    wrapped = compute_metrics(samples, reference=reference, kid_subset_size=100)
    assert ours["frechet_inception_distance"] == pytest.approx(wrapped["fid"], rel=1e-5)
    assert ours["inception_score_mean"] == pytest.approx(wrapped["is"], rel=1e-5)
    assert ours["precision"] == pytest.approx(wrapped["precision"])


def test_fid_against_npz_uses_precomputed_statistics(tmp_path, test_split):
    images, _ = test_split
    reference = extract_features(images[:500], STAND_IN, ["pooled"])["pooled"].double().numpy()
    npz = tmp_path / "reference.npz"
    np.savez(npz, mu=reference.mean(0), sigma=np.cov(reference, rowvar=False))
    samples = images[500:]
    features = extract_features(samples, STAND_IN, ["pooled"])["pooled"].double().numpy()
    result = fid_against_npz(samples, npz, feature_extractor=STAND_IN)
    assert result["fid"] == pytest.approx(frechet_scipy(features, reference), rel=1e-4)
    assert result["provenance"]["num_samples"] == 500 and "reference.npz" in result["provenance"]["reference"]
    # With reference images as well (ADM's batches): FID from the statistics, the rest from the images.
    both = compute_metrics(
        samples, reference=images[:500], feature_extractor=STAND_IN, kid_subset_size=100, fid_statistics=npz
    )
    assert both["fid"] == result["fid"] and both["provenance"]["fid_reference"] == result["provenance"]["reference"]
    images_only = compute_metrics(samples, reference=images[:500], feature_extractor=STAND_IN, kid_subset_size=100)
    assert both["kid"] == images_only["kid"] and both["precision"] == images_only["precision"]

    np.savez(npz, mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(ValueError, match="3-d statistics"):
        fid_against_npz(samples, npz, feature_extractor=STAND_IN)
    np.savez(npz, arr_0=np.zeros(3))
    with pytest.raises(ValueError, match="no 'mu'/'sigma'"):
        fid_against_npz(samples, npz, feature_extractor=STAND_IN)


def test_bad_input_is_rejected_clearly(test_split):
    images, labels = test_split
    with pytest.raises(ValueError, match="uint8"):
        compute_metrics(images.float())
    with pytest.raises(ValueError, match="channels"):
        compute_metrics(torch.zeros(4, 5, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="unknown reference"):
        compute_metrics(images, reference="imagenet")
    with pytest.raises(ValueError, match="unknown feature extractor"):
        compute_metrics(images, feature_extractor="nope", reference=images)
    with pytest.raises(ValueError, match="sample_labels"):
        compute_metrics(images[:10], labels[:5], reference=images[:10])
    with pytest.raises(ValueError, match="32x32"):
        compute_metrics(torch.zeros(4, 1, 64, 64, dtype=torch.uint8), reference=images[:10])
