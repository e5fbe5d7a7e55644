"""Tests of the latent cache: extraction, resume, verification, loading, the CLI, and training from it."""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image
from torch.utils.data import Subset

from doc_commands import two_cpu_processes
from sdtgen.cli.extract_latents import add_parser
from sdtgen.data.animals import ANIMAL_CLASSES, AnimalsDataset
from sdtgen.data.latents import CacheMismatchError, LatentCacheError, LatentDataset, extract_latents, verify_cache
from sdtgen.vae import load_vae

NUM_IMAGES, SHARD_SIZE, BATCH_SIZE = 64, 24, 10  # shards of 24, 24 and 16 images
FP16_TOLERANCE = {"rtol": 2**-10, "atol": 1e-6}  # float16 rounding, and fp32 batch noise


def save_random_vae(folder, seed: int, channels: int = 1) -> str:
    """A tiny untrained AutoencoderKL like the built-in one (1 -> 4 channels, factor 2)."""
    torch.manual_seed(seed)
    AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    return save_random_vae(tmp_path_factory.mktemp("vae"), seed=0)


@pytest.fixture(scope="module")
def vae(vae_dir):
    return load_vae(vae_dir)


@pytest.fixture(scope="module")
def subset():
    return Subset(AnimalsDataset("train"), range(NUM_IMAGES))


def extract(dataset, vae, out_dir, **kwargs):
    return extract_latents(
        dataset, vae, out_dir, shard_size=SHARD_SIZE, batch_size=BATCH_SIZE, progress=False, **kwargs
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory, subset, vae):
    out_dir = tmp_path_factory.mktemp("cache") / "latents"
    extract(subset, vae, out_dir)
    return out_dir


@pytest.fixture
def cache_copy(cache, tmp_path):
    """A copy of the module's cache that a test may damage."""
    return shutil.copytree(cache, tmp_path / "latents")


def shard_bytes(cache_dir) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(cache_dir.glob("shard-*"))}


def test_round_trip_of_moments_flips_and_labels(cache, subset, vae):
    dataset = LatentDataset(cache)
    images = torch.stack([subset[i][0] for i in range(NUM_IMAGES)])
    labels = [subset[i][1] for i in range(NUM_IMAGES)]
    for flip, batch in ((False, images), (True, images.flip(-1))):
        mean, logvar = vae.encode_moments(batch)
        items = [dataset[i, flip] for i in range(NUM_IMAGES)]
        torch.testing.assert_close(torch.stack([item[0] for item in items]), mean, **FP16_TOLERANCE)
        torch.testing.assert_close(torch.stack([item[1] for item in items]), logvar, **FP16_TOLERANCE)
        assert [item[2] for item in items] == labels
    assert not torch.equal(dataset[5][0], dataset[5, True][0])  # silhouettes are not symmetric
    for first, second in zip(dataset[5], dataset[5, False]):
        assert torch.equal(torch.as_tensor(first), torch.as_tensor(second))
    assert torch.equal(dataset[-1][0], dataset[NUM_IMAGES - 1][0])
    assert dataset[0][0].dtype == torch.float32
    with pytest.raises(IndexError):
        dataset[NUM_IMAGES]


def test_properties_and_manifest(cache, vae):
    dataset = LatentDataset(cache)
    assert len(dataset) == NUM_IMAGES
    assert dataset.num_classes == 10 and dataset.class_names == list(ANIMAL_CLASSES)
    assert dataset.latent_shape == (4, 16, 16)
    assert {**dataset.vae_description, "weights_sha256": None} == {**vae.describe(), "weights_sha256": None}
    manifest = dataset.manifest
    assert manifest["complete"] and manifest["dtype"] == "float16"
    assert [(s["file"], s["start"], s["count"]) for s in manifest["shards"]] == [
        ("shard-00000.safetensors", 0, 24),
        ("shard-00001.safetensors", 24, 24),
        ("shard-00002.safetensors", 48, 16),
    ]
    assert manifest["dataset"]["kind"] == "animals" and manifest["dataset"]["num_samples"] == NUM_IMAGES
    assert (manifest["scale"], manifest["shift"]) == (vae.scale, vae.shift)


def test_draw_latents_matches_the_vae(cache, vae):
    dataset = LatentDataset(cache)
    mean, logvar, _ = dataset[3]
    drawn = dataset.draw_latents(mean, logvar, torch.Generator().manual_seed(7))
    expected = vae.sample_latent(mean, logvar, torch.Generator().manual_seed(7))
    torch.testing.assert_close(drawn, expected)


def test_shards_are_memory_mapped_not_loaded(cache):
    dataset = LatentDataset(cache)
    arrays = [array for shard in dataset._arrays for array in shard.values()]
    assert len(arrays) == 15 and all(isinstance(array, np.memmap) for array in arrays)
    # Pickling (DataLoader workers) sends the manifest, not the data, and maps again.
    payload = pickle.dumps(dataset)
    assert len(payload) < sum(array.nbytes for array in arrays) / 10
    assert torch.equal(pickle.loads(payload)[10][0], dataset[10][0])


def test_resume_recomputes_only_the_missing_shard(cache_copy, subset, vae, monkeypatch):
    before, manifest_before = shard_bytes(cache_copy), json.loads((cache_copy / "manifest.json").read_text())
    kept = {
        name: (cache_copy / name).stat().st_mtime_ns for name in ("shard-00000.safetensors", "shard-00002.safetensors")
    }
    (cache_copy / "shard-00001.safetensors").unlink()
    calls = []
    encode = vae.encode_moments
    monkeypatch.setattr(vae, "encode_moments", lambda images, **kw: calls.append(len(images)) or encode(images, **kw))
    extract(subset, vae, cache_copy)
    assert calls == [20, 20, 8]  # shard 1 only: 24 images in batches of 10, each with its flip
    assert {name: (cache_copy / name).stat().st_mtime_ns for name in kept} == kept
    assert shard_bytes(cache_copy) == before
    assert json.loads((cache_copy / "manifest.json").read_text()) == manifest_before


def test_truncated_shard_is_a_clear_error_and_resume_repairs_it(cache_copy, subset, vae, caplog):
    path = cache_copy / "shard-00002.safetensors"
    original = path.read_bytes()
    path.write_bytes(original[:-100])
    with pytest.raises(LatentCacheError, match=r"shard-00002\.safetensors is damaged.*Delete it"):
        LatentDataset(cache_copy)
    extract(subset, vae, cache_copy)
    assert "shard-00002.safetensors is damaged" in caplog.text
    assert path.read_bytes() == original
    assert len(LatentDataset(cache_copy)) == NUM_IMAGES


def test_changed_shard_bytes_are_recomputed(cache_copy, subset, vae):
    path = cache_copy / "shard-00000.safetensors"
    original = bytearray(path.read_bytes())
    damaged = original.copy()
    damaged[-1] ^= 0xFF  # same size and header: only the recorded sha256 can tell
    path.write_bytes(bytes(damaged))
    extract(subset, vae, cache_copy)
    assert path.read_bytes() == bytes(original)


def test_other_vae_or_data_is_a_clear_error(cache_copy, subset, vae, tmp_path):
    old_manifest = LatentDataset(cache_copy).manifest
    other_vae = load_vae(save_random_vae(tmp_path / "other-vae", seed=1))
    with pytest.raises(CacheMismatchError, match=r"other settings \(vae\.weights_sha256: \S+ -> \S+\)\.$"):
        extract(subset, other_vae, cache_copy)
    other_data = Subset(AnimalsDataset("train"), range(1, NUM_IMAGES + 1))
    with pytest.raises(CacheMismatchError, match=r"other settings \(dataset\.sha256: \S+ -> \S+\)\.$"):
        extract(other_data, vae, cache_copy)
    extract(subset, other_vae, cache_copy, overwrite=True)
    manifest = LatentDataset(cache_copy).manifest
    assert manifest["vae"]["weights_sha256"] != old_manifest["vae"]["weights_sha256"]
    assert manifest["shards"] != old_manifest["shards"]


def test_missing_or_incomplete_cache_is_a_clear_error(cache_copy, tmp_path):
    with pytest.raises(FileNotFoundError, match="No latent cache at .*nowhere.*Extract one first"):
        LatentDataset(tmp_path / "nowhere")
    manifest = json.loads((cache_copy / "manifest.json").read_text())
    (cache_copy / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(LatentCacheError, match="incomplete.*re-run"):
        LatentDataset(cache_copy)


def test_random_flip_dataset_is_refused(vae, tmp_path):
    from sdtgen.data.folders import ImageFolderDataset

    (tmp_path / "images" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "cat" / "0.png")
    with pytest.raises(ValueError, match="random_flip"):
        extract(ImageFolderDataset(tmp_path / "images", 8, random_flip=True), vae, tmp_path / "latents")


# --------------------------------------------------------------------------- command


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdtgen")
    add_parser(parser.add_subparsers())
    return parser.parse_args(["extract-latents", *argv])


def make_image_folder(root, bad: bool = True) -> None:
    """Two classes of small RGB images and (if ``bad``) one unreadable file in class "b"."""
    generator = np.random.default_rng(0)
    for name, count in (("a", 3), ("b", 2)):
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = generator.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    if bad:
        (root / "b" / "9-bad.png").write_bytes(b"not a png")


def test_command_on_an_image_folder(tmp_path, capsys):
    make_image_folder(tmp_path / "images")
    argv = [
        "--data",
        str(tmp_path / "images"),
        "--vae",
        "identity",
        "--image-size",
        "16",
        "--device",
        "cpu",
        "--shard-size",
        "4",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    with pytest.raises(ValueError, match=r"Cannot read image .*9-bad\.png"):
        args = parse([*argv, "--out", str(tmp_path / "raise")])
        args.run(args)
    args = parse([*argv, "--out", str(tmp_path / "latents"), "--on-error", "skip"])
    with pytest.warns(UserWarning, match="9-bad.png"):
        assert args.run(args) == 0
    assert "Wrote the latent cache of 6 images" in capsys.readouterr().out
    dataset = LatentDataset(tmp_path / "latents")
    assert dataset.latent_shape == (3, 16, 16) and dataset.class_names == ["a", "b"]
    assert [dataset[i][2] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    # The bad image is replaced by the next readable one of its class (here: the first).
    torch.testing.assert_close(dataset[5][0], dataset[3][0])
    mean, logvar, _ = dataset[0]
    assert logvar.max() == -30.0  # the identity VAE's log-variance floor
    assert torch.equal(dataset.draw_latents(mean, logvar, torch.Generator().manual_seed(0)), mean)
    assert dataset.manifest["dataset"]["kind"] == "image_folder"


def test_command_help_and_argument_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--shard-size" in help_text and "resumes" in help_text and "accelerate launch" in help_text
    with pytest.raises(SystemExit):
        parse(["--batch-size", "0"])
    assert "must be at least 1" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--out is required"):
        args = parse(["--data", "some/folder", "--device", "cpu"])
        args.run(args)


def test_command_verifies_a_cache(tmp_path, capsys):
    make_image_folder(tmp_path / "images", bad=False)
    out = tmp_path / "latents"
    args = parse(
        [
            "--data",
            str(tmp_path / "images"),
            "--vae",
            "identity",
            "--image-size",
            "8",
            "--device",
            "cpu",
            "--shard-size",
            "2",
            "--num-workers",
            "0",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert args.run(args) == 0
    capsys.readouterr()
    verify = parse(["--verify", "--out", str(out)])
    assert verify.run(verify) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"Verified the latent cache {out}: 5 images in 3 shards")
    assert f"the image folder {tmp_path / 'images'} is unchanged" in printed[0]
    shard = out / "shard-00001.safetensors"
    damaged = bytearray(shard.read_bytes())
    damaged[-1] ^= 0xFF  # same size and header: only the sha256 can tell
    shard.write_bytes(bytes(damaged))
    with pytest.raises(LatentCacheError) as caught:
        verify.run(verify)
    message = str(caught.value)
    assert "\n" not in message and "1 damaged shard(s): shard-00001.safetensors (its sha256 differs" in message
    assert "shard-00000" not in message and "shard-00002" not in message
    with pytest.raises(SystemExit):
        parse(["--verify", "--out"])  # --out needs its folder
    with pytest.raises(ValueError, match="leave out --overwrite"):
        both = parse(["--verify", "--overwrite", "--out", str(out)])
        both.run(both)


def test_command_names_its_flags_when_the_cache_differs(tmp_path):
    make_image_folder(tmp_path / "images", bad=False)
    argv = [
        "--data",
        str(tmp_path / "images"),
        "--vae",
        "identity",
        "--device",
        "cpu",
        "--num-workers",
        "0",
        "--no-progress",
        "--out",
        str(tmp_path / "latents"),
    ]
    args = parse([*argv, "--image-size", "8"])
    args.run(args)
    other = parse([*argv, "--image-size", "4"])
    with pytest.raises(
        CacheMismatchError, match=r"other settings \(.*Pass a new --out, or --overwrite to replace it\.$"
    ):
        other.run(other)


def test_verify_cache_checks_shards_and_the_data(cache_copy, subset):
    summary = verify_cache(cache_copy)
    assert "64 images in 3 shards" in summary and "dataset not checked: a subset" in summary
    assert verify_cache(cache_copy, subset).endswith("the given dataset is unchanged.")
    with pytest.raises(LatentCacheError, match="extracted from other data than the given dataset"):
        verify_cache(cache_copy, Subset(AnimalsDataset("train"), range(1, NUM_IMAGES + 1)))
    (cache_copy / "shard-00002.safetensors").unlink()
    with pytest.raises(
        LatentCacheError, match=r"1 damaged shard\(s\): shard-00002\.safetensors \(the file is missing\)"
    ):
        verify_cache(cache_copy)


def test_workers_do_not_change_the_shards(cache, subset, vae, tmp_path):
    extract(subset, vae, tmp_path / "latents", num_workers=2)
    assert shard_bytes(tmp_path / "latents") == shard_bytes(cache)  # the module's cache: no workers
    assert (tmp_path / "latents" / "manifest.json").read_text() == (cache / "manifest.json").read_text()


# --------------------------------------------------------------------------- training from the cache

TINY_RUN = [
    "data.vae=identity",
    "data.image_size=8",
    "model.preset=S/4",
    "model.depth=1",
    "model.hidden_size=32",
    "model.num_heads=2",
    "train.global_batch_size=4",
    "train.max_steps=2",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.final_eval=false",
    "train.mixed_precision=no",
    "sample.per_class=1",
    "sample.steps=2",
]


def train_tiny(run_dir, *overrides: str) -> list[dict]:
    """A two-step run of a tiny model; its losses and gradient norms per step."""
    from accelerate.state import AcceleratorState

    from sdtgen.config import load_config
    from sdtgen.training.trainer import train

    AcceleratorState._reset_state(reset_partial_state=True)  # the precision of an earlier run
    train(load_config(None, [f"output_dir={run_dir}", *TINY_RUN, *overrides]))
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{key: value for key, value in line.items() if key != "images_per_s"} for line in lines]


def refuse(name: str):
    def refused(*args, **kwargs):
        raise AssertionError(f"opening a complete cache called {name}")

    return refused


def test_training_opens_a_complete_cache_by_its_manifest_alone(tmp_path, monkeypatch):
    import sdtgen.data.latents.reader as reader
    import sdtgen.data.latents.writer as writer
    import sdtgen.training.data as training_data

    images, moved, cache_dir = tmp_path / "images", tmp_path / "moved", tmp_path / "cache"
    make_image_folder(images, bad=False)
    first = train_tiny(
        tmp_path / "extracts", f"data.dataset={images}", f"data.latent_cache={cache_dir}", "data.num_workers=2"
    )
    assert [line["step"] for line in first] == [1, 2]
    # A moved folder is fingerprinted again: same images, so the shards are kept.
    images.rename(moved)
    with_moved = [f"data.dataset={moved}", f"data.latent_cache={cache_dir}"]
    assert train_tiny(tmp_path / "moved-run", *with_moved) == first
    assert LatentDataset(cache_dir).manifest["dataset"]["root"] == str(moved.resolve())

    shutil.rmtree(moved)
    for module, name in (
        (training_data, "extract_latents"),
        (training_data, "image_dataset"),
        (reader, "file_sha256"),
        (writer, "file_sha256"),
        (writer, "dataset_fingerprint"),
    ):
        monkeypatch.setattr(module, name, refuse(name))
    assert train_tiny(tmp_path / "images-gone", *with_moved) == first

    with pytest.raises(
        CacheMismatchError,
        match=r"other data or with another VAE than the config's "
        r"\(dataset\.image_size: 8 -> 4; .*point data\.latent_cache",
    ):
        train_tiny(tmp_path / "other-size", *with_moved, "data.image_size=4")
    other_vae = save_random_vae(tmp_path / "rgb-vae", seed=0, channels=3)
    with pytest.raises(CacheMismatchError, match=r"another VAE.*vae\.type: \"identity\" -> \"autoencoder_kl\""):
        train_tiny(tmp_path / "other-vae", *with_moved, f"data.vae={other_vae}")
    with pytest.raises(CacheMismatchError, match=r"extracted from \S+moved, but data\.dataset=\S+elsewhere"):
        # The run folder is not the missing dataset folder: the run lock creates its folder before the data opens.
        train_tiny(tmp_path / "run", f"data.dataset={tmp_path / 'elsewhere'}", f"data.latent_cache={cache_dir}")


# --------------------------------------------------------------------------- processes

LAUNCHED = """import sys
from accelerate import Accelerator
from torch.utils.data import Subset
from sdtgen.data.animals import AnimalsDataset
from sdtgen.data.latents import extract_latents
from sdtgen.vae import load_vae

extract_latents(Subset(AnimalsDataset("train"), range({num_images})), load_vae(sys.argv[1]),
                sys.argv[2], shard_size={shard_size}, batch_size={batch_size},
                accelerator=Accelerator(), progress=False)
"""


@pytest.mark.slow
def test_two_processes_write_the_same_cache(cache, vae_dir, tmp_path):
    script = tmp_path / "launched.py"
    script.write_text(LAUNCHED.format(num_images=NUM_IMAGES, shard_size=SHARD_SIZE, batch_size=BATCH_SIZE))
    launch, env = two_cpu_processes()
    command = [
        *launch,
        str(script),
        vae_dir,
        str(tmp_path / "latents"),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    two, one = LatentDataset(tmp_path / "latents"), LatentDataset(cache)
    # Same files; bytes may differ in the last float16 bit, since CPU convolutions round
    # differently with other thread counts (the launched processes use 1 thread).
    assert [shard["file"] for shard in two.manifest["shards"]] == [shard["file"] for shard in one.manifest["shards"]]
    assert {**two.manifest, "shards": None} == {**one.manifest, "shards": None}
    for index in range(NUM_IMAGES):
        for flip in (False, True):
            *moments_two, label_two = two[index, flip]
            *moments_one, label_one = one[index, flip]
            assert label_two == label_one
            torch.testing.assert_close(moments_two, moments_one, **FP16_TOLERANCE)
