"""`sdtgen eval`: sample sets, metrics.json provenance, references and their errors."""

import json

import numpy as np
import pytest
import torch

from sdtgen.cli import main
from sdtgen.data.animals import ANIMAL_CLASSES, load_animals
from sdtgen.evaluation import metrics as metrics_module
from sdtgen.evaluation.evaluate import LOW_CLASS_ACCURACY, load_samples, sample_labels
from stand_ins import stand_in_inception_weights
from tiny_runs import random_model, write_run


def sdtgen_eval(*args) -> int:
    """`sdtgen eval` with `args`, paths and numbers given as they are."""
    return main(["eval", *map(str, args)])


def test_label_modes():
    assert sample_labels(20, 10, "balanced", 0) == [i // 2 for i in range(20)]
    uniform = sample_labels(2000, 10, "uniform", 0)
    assert uniform == sample_labels(2000, 10, "uniform", 0) and uniform != sample_labels(2000, 10, "uniform", 1)
    assert min(np.bincount(uniform, minlength=10)) > 150
    with pytest.raises(ValueError, match="label mode must be one of balanced, uniform"):
        sample_labels(4, 2, "random", 0)


def test_eval_of_real_images_as_a_sample_set(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDTGEN_CACHE_DIR", str(tmp_path / "cache"))
    images, labels = load_animals("test")
    npz = tmp_path / "real.npz"
    np.savez(npz, arr_0=images[::3].permute(0, 2, 3, 1).numpy(), arr_1=labels[::3].numpy())  # every class
    assert sdtgen_eval("--samples", npz, "--out", tmp_path / "out") == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["class_accuracy"] > 0.95 and metrics["fid"] < 10
    per_class, counts = metrics["class_accuracy_per_class"], metrics["class_counts"]
    assert list(per_class) == list(counts) == list(ANIMAL_CLASSES)
    assert list(counts.values()) == np.bincount(labels[::3].numpy(), minlength=10).tolist()
    weighted = sum(per_class[name] * counts[name] for name in counts) / sum(counts.values())
    assert weighted == pytest.approx(metrics["class_accuracy"], abs=1e-6) and min(per_class.values()) > 0.8
    printed = capsys.readouterr().out
    verdict = "Every class reaches 85%" if min(per_class.values()) >= LOW_CLASS_ACCURACY else "! = below 85%"
    assert "Class accuracy per class: bear " in printed and verdict in printed
    provenance = metrics["provenance"]
    assert (
        provenance["feature_extractor"] == "sdtgen-animals"
        and len(provenance["feature_extractor_weights_sha256"]) == 64
    )
    assert provenance["num_samples"] == 334 and provenance["torch_fidelity"]


def test_eval_of_a_checkpoint_writes_adm_npz_and_full_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("SDTGEN_CACHE_DIR", str(tmp_path / "cache"))
    run = write_run(tmp_path / "run", random_model("flow", input_size=16), objective="flow")
    out = tmp_path / "eval"
    request = ("--ckpt", run, "--num-samples", 20, "--steps", 2)
    assert sdtgen_eval(*request, "--batch-size", 8, "--out", out) == 0
    images, labels = load_samples(out / "samples.npz")
    assert images.shape == (20, 32, 32, 1) and images.dtype == np.uint8
    assert labels.tolist() == [i // 2 for i in range(20)]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("fid", "is", "kid", "precision", "recall", "class_accuracy"):
        assert isinstance(metrics[key], float), key
    assert metrics["class_counts"] == dict.fromkeys(ANIMAL_CLASSES, 2)  # 20 class-balanced samples
    assert all(accuracy in (0.0, 0.5, 1.0) for accuracy in metrics["class_accuracy_per_class"].values())
    provenance = metrics["provenance"]
    recorded = "ckpt model_sha256 sampler steps guidance_scale guidance_channels guidance_interval vae seed num_samples"
    recorded += " labels feature_extractor feature_extractor_weights_sha256 torch_fidelity reference"
    for key in recorded.split():
        assert provenance[key] is not None, key
    assert provenance["steps"] == 2 and provenance["num_samples"] == 20 and provenance["labels"] == "balanced"
    # The same request again gives the same sample set.
    assert sdtgen_eval(*request, "--batch-size", 20, "--out", tmp_path / "again") == 0
    again, _ = load_samples(tmp_path / "again" / "samples.npz")
    assert np.abs(again.astype(int) - images.astype(int)).max() <= 1
    # bf16 sampling on the CPU: the same images to bf16 rounding, and recorded as such.
    assert sdtgen_eval(*request, "--dtype", "bf16", "--out", tmp_path / "bf16") == 0
    bf16, _ = load_samples(tmp_path / "bf16" / "samples.npz")
    assert np.abs(bf16.astype(int) - images.astype(int)).mean() < 3
    assert json.loads((tmp_path / "bf16" / "metrics.json").read_text())["provenance"]["dtype"] == "bfloat16"


def test_missing_inception_weights_say_what_to_do(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    npz = tmp_path / "samples.npz"
    np.savez(npz, arr_0=np.zeros((4, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        sdtgen_eval("--samples", npz, "--ref", tmp_path / "VIRTUAL_imagenet256_labeled.npz", "--out", tmp_path / "o")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "--inception-weights" in err


def test_bad_sample_sets(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sdtgen_eval("--samples", tmp_path / "none.npz")
    assert "neither an .npz file nor a folder" in capsys.readouterr().err


def test_inception_path_with_stand_in_weights(tmp_path, monkeypatch):
    """The real Inception weights cannot be downloaded here: a random file of the right shapes tests the wiring.

    Against an ADM batch (statistics and images), each image set goes through Inception once.
    """
    weights = stand_in_inception_weights(tmp_path / "stand-in-inception.pth")
    generator = np.random.default_rng(0)
    samples, reference = (generator.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in (20, 24))
    extracted: list[int] = []
    extract = metrics_module.extract_features
    monkeypatch.setattr(
        metrics_module,
        "extract_features",
        lambda images, *args, **kwargs: extracted.append(len(images)) or extract(images, *args, **kwargs),
    )
    np.savez(tmp_path / "samples.npz", arr_0=samples)
    ref = tmp_path / "VIRTUAL_ref.npz"
    np.savez(ref, arr_0=reference, mu=np.zeros(2048), sigma=np.eye(2048))
    scored = sdtgen_eval(
        "--samples", tmp_path / "samples.npz", "--ref", ref, "--inception-weights", weights, "--out", tmp_path / "out"
    )
    assert scored == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert np.isfinite(metrics["fid"]) and metrics["provenance"]["feature_extractor"] == "inception-v3-compat"
    assert "VIRTUAL_ref.npz" in metrics["provenance"]["fid_reference"]
    assert sorted(extracted) == [20, 24]  # the samples' features serve FID and the other metrics alike
