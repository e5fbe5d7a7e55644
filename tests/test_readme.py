"""Every command in README.md is run, so the README cannot go stale.

The README's ```bash blocks, its inline `sdtgen ...` / `accelerate ...` / `python ...`
commands and its Python blocks are read from the file itself. Each command must have exactly
one plan in this module, and a plan for a command the README no longer has is an error too:

- ``CI``: the two set-up commands, run verbatim by `.ci/run` in a fresh clone (the main
  job takes 12 minutes on a bf16 CPU, so it runs once there rather than in every `pytest`).
- ``AS_WRITTEN``: run verbatim here, in a scratch folder whose `runs/animals-sdt` is the main
  job's run when `.ci/run` has made one, else a tiny random model in the same layout.
- ``STAND_INS``: commands that need what this machine lacks (ImageNet, GPUs, several nodes,
  the hub's sd-vae-ft-ema, the DiT-XL/2 and Inception weights), or that would repeat at full
  size what the main job already did (its 1,000-sample evaluation). They run with the listed
  plain-text replacements and nothing else changed; files the README names (the DiT
  checkpoint, the ADM reference batch, the Inception weights, the hub VAE in a Hugging Face
  cache) are made under those exact names with the real layout and tiny random contents.

These tests are slow-marked (about 3 minutes together); `pytest -m "not slow"` skips them.
"""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from doc_commands import (
    EIGHT_GPUS,
    README,
    built_in_run,
    free_port,
    link_repo_folders,
    markdown_commands,
    run,
    scratch_env,
    shell_command,
)
from sdtgen.config import RunConfig
from sdtgen.diffusion.sampling import DEFAULT_SAMPLER, DEFAULT_STEPS
from sdtgen.runs import find_source
from stand_ins import (
    cache_hub_vae,
    original_state_dict,
    stand_in_imagenet,
    stand_in_inception_weights,
    tiny_diffusers_dit,
)
from tiny_runs import REPO, main_job_run

MAIN_JOB = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && accelerate config default && "
    "accelerate launch -q scripts/train_gen.py"
)
TEST_COMMAND = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && pytest'
CI = {
    MAIN_JOB,
    TEST_COMMAND,
    "accelerate launch -q scripts/train_gen.py",
    "accelerate config default",
}  # the last two: named in the prose

# Run verbatim, in this order (the Python block loads what `sdtgen export` wrote).
AS_WRITTEN = (
    "sdtgen sample --class giraffe --class zebra --num 8 --out samples/",
    "sdtgen sample --list-classes",
    "sdtgen sample --class giraffe --class zebra --class elephant --num 8",
    "sdtgen inspect --class giraffe --out decay.png",
    "sdtgen export --ckpt runs/animals-sdt --out animals-pipeline",
    "python:from sdtgen import SDTPipeline",
)
# The main job's own final evaluation already sampled and scored 1,000 images of this run.
README_EVAL = "sdtgen eval --ckpt runs/animals-sdt --num-samples 1000 --out eval/animals-sdt"

SHORT_TRAINING = " train.max_steps=2 train.global_batch_size=8 train.checkpoint_every=2 train.final_eval=false sample.per_class=1 sample.steps=2"
IMAGENET_TRAINING = " model.preset=T/2 model.depth=1 model.hidden_size=64 model.num_heads=2 train.max_steps=2 train.global_batch_size=4 train.checkpoint_every=2 sample.steps=2 sample.per_class=1"

# command -> the replacements it runs with, (README text, what runs instead), applied in order.
STAND_INS = {
    README_EVAL: (("--num-samples 1000", "--num-samples 100"),),
    # The built-in example of an override, 2 steps instead of the default's.
    "accelerate launch -q scripts/train_gen.py model.attention=vanilla output_dir=runs/animals-dit": (
        ("output_dir=runs/animals-dit", "output_dir=runs/animals-dit" + SHORT_TRAINING),
    ),
    # ImageNet: a class-per-folder stand-in with ImageNet's 1,000 classes, one small image each;
    # sd-vae-ft-ema: a tiny random VAE in a Hugging Face cache under that exact hub id.
    "sdtgen extract-latents --data /data/imagenet/train --image-size 256 --vae stabilityai/sd-vae-ft-ema "
    "--out cache/imagenet256-sd-vae-ft-ema": (("/data/imagenet/train", "{imagenet}"),),
    "python -c \"from diffusers import AutoencoderKL; AutoencoderKL.from_pretrained('stabilityai/sd-vae-ft-ema')"
    ".save_pretrained('sd-vae-ft-ema')\"": (),  # from the stand-in cache
    # XL/2 with its AdamW state needs 11 GB a process: a 1-block T/2 (256 tokens, 1000 classes) trains 2 steps.
    "accelerate launch -q --multi_gpu --num_processes 8 scripts/train_gen.py --config configs/imagenet256_sdt_xl2.yaml": (
        EIGHT_GPUS,
        (
            "configs/imagenet256_sdt_xl2.yaml",
            "configs/imagenet256_sdt_xl2.yaml data.dataset={imagenet}" + IMAGENET_TRAINING,
        ),
    ),
    # Two "nodes" on this machine, one process each, resuming the run above for 2 more steps.
    "accelerate launch -q --multi_gpu --num_machines 4 --machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 "
    "--num_processes 32 scripts/train_gen.py --config configs/imagenet256_sdt_xl2.yaml": (
        ("--num_machines 4", "--num_machines 2"),
        ("--machine_rank 0", "--machine_rank {rank}"),
        ("10.0.0.1", "127.0.0.1"),
        ("--main_process_port 29500", "--main_process_port {port}"),
        ("--num_processes 32", "--num_processes 2"),
        (
            "configs/imagenet256_sdt_xl2.yaml",
            "configs/imagenet256_sdt_xl2.yaml data.dataset={imagenet}"
            + IMAGENET_TRAINING
            + " train.max_steps=4 train.resume=latest",
        ),
    ),
    "sdtgen sample --ckpt runs/imagenet256_sdt_xl2 --class 207 --guidance-scale 4.0 --sampler dpm++ --steps 25 --seed 1 --out samples/": (),
    # FID-50K: 8 samples; the ADM reference batch and the Inception weights are stand-in files.
    "accelerate launch -q --multi_gpu --num_processes 8 -m sdtgen.cli eval --ckpt runs/imagenet256_sdt_xl2 --num-samples 50000 "
    "--labels uniform --steps 250 --guidance-scale 1.5 --ref VIRTUAL_imagenet256_labeled.npz "
    "--inception-weights weights-inception-2015-12-05-6726825d.pth --out eval/imagenet256_sdt_xl2": (
        EIGHT_GPUS,
        ("--num-samples 50000", "--num-samples 8"),
    ),
    # The DiT-XL/2 checkpoints: tiny ones in the original and diffusers layouts, under the README's names.
    "sdtgen convert --from dit DiT-XL-2-256x256.pt --out dit-xl2": (),
    "sdtgen convert --from diffusers ./DiT-XL-2-256 --out dit-xl2": (),
    "sdtgen convert --from dit DiT-XL-2-256x256.pt --attention sdt --out sdt-xl2": (),
    # The model block: S/2 instead of XL/2 (XL/2's 675M parameters are checked in test_model.py).
    "python:import torch": (('"XL/2"', '"S/2"'),),
}


# ------------------------------------------------------------------ the plans cover the README


def test_every_readme_command_has_exactly_one_plan():
    commands = markdown_commands(README.read_text())
    plans = [*CI, *AS_WRITTEN, *STAND_INS]
    assert len(plans) == len(set(plans)), "a command has two plans"
    missing = [c for c in commands if c not in plans]
    assert not missing, "README commands nobody runs (give each a plan in tests/test_readme.py):\n" + "\n".join(missing)
    stale = [p for p in plans if p not in commands]
    assert not stale, "plans for commands the README no longer has:\n" + "\n".join(stale)


def test_ci_runs_the_set_up_commands_verbatim():
    ci = (REPO / ".ci" / "run").read_text()
    for command in CI:
        assert command in ci, f".ci/run must run the README's set-up command verbatim: {command}"


def test_reader_joins_lines_and_skips_fragments():
    text = "x `sdtgen a --b` and `accelerate launch ...` and `sdtgen eval` and `--flag`\n```bash\nsdtgen c \\\n    --d 1   # note\n# only a comment\n```\n"
    assert markdown_commands(text) == ["sdtgen c --d 1", "sdtgen a --b"]


# ------------------------------------------------------------------ the built-in run


def test_main_job_leaves_what_the_readme_says():
    run_dir = main_job_run()
    if run_dir is None:
        pytest.skip("the main job has not been run in this checkout (.ci/run runs it)")
    item = re.search(r"^4\. leaves `runs/animals-sdt/`:(.*?)^$", README.read_text(), flags=re.S | re.M).group(1)
    checkpoint = max((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == RunConfig().train.max_steps
    entries = re.findall(r"`([^`]+)`", item)
    assert len(entries) >= 6, entries
    for entry in entries:
        pattern = entry.rstrip("/").replace("<step>", "*")
        assert list(run_dir.glob(pattern)) or list(checkpoint.glob(pattern)), (
            f"README lists {entry}; the main job left none"
        )
    record = json.loads((run_dir / "log.jsonl").read_text().splitlines()[-1])
    assert {"step", "loss"} <= set(record), sorted(record)


# ------------------------------------------------------------------ the commands


@pytest.mark.slow
def test_built_in_commands_run_as_written(tmp_path):
    cwd = tmp_path / "work"
    (cwd / "runs").mkdir(parents=True)
    (cwd / "runs" / "animals-sdt").symlink_to(built_in_run(tmp_path), target_is_directory=True)
    link_repo_folders(cwd, "scripts", "configs", "cache")
    env = scratch_env(tmp_path)

    outputs = {command: run(shell_command(command), cwd, env) for command in AS_WRITTEN}
    run(shell_command(README_EVAL, STAND_INS[README_EVAL]), cwd, env)

    samples = cwd / "samples"  # both sample commands write there (the second by default)
    for name in ("giraffe", "zebra", "elephant"):
        assert len(list(samples.glob(f"*-{name}-*.png"))) == 8, name
    assert (samples / "grid.png").is_file() and json.loads((samples / "settings.json").read_text())
    assert "giraffe" in outputs["sdtgen sample --list-classes"].stdout
    assert Image.open(cwd / "decay.png").size[0] > 100
    assert (cwd / "animals-pipeline" / "model_index.json").is_file()
    metrics = json.loads((cwd / "eval" / "animals-sdt" / "metrics.json").read_text())
    # The README's eval command passes no --steps: the run's own sample steps (the main job's run, or the
    # tiny stand-in's 3 when .ci/run has not made one), else the sampler's default.
    run_steps = find_source(str(cwd / "runs" / "animals-sdt")).sample_defaults.get("steps")
    expected_steps = run_steps or DEFAULT_STEPS["flow"][DEFAULT_SAMPLER["flow"]]
    assert metrics["provenance"]["num_samples"] == 100 and metrics["provenance"]["steps"] == expected_steps
    assert 0.0 <= metrics["class_accuracy"] <= 1.0 and np.isfinite(metrics["fid"])

    override_example = next(c for c in STAND_INS if c.endswith("output_dir=runs/animals-dit"))
    run(shell_command(override_example, STAND_INS[override_example]), cwd, env)
    config = (cwd / "runs" / "animals-dit" / "config.yaml").read_text()
    assert (
        "attention: vanilla" in config
        and (cwd / "runs" / "animals-dit" / "checkpoints" / "checkpoint-2" / "model").is_dir()
    )


@pytest.mark.slow
def test_imagenet_recipe_runs_with_stand_ins(tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    link_repo_folders(cwd, "scripts", "configs")
    imagenet = stand_in_imagenet(tmp_path / "imagenet" / "train")
    cache_hub_vae(tmp_path / "hf", "stabilityai/sd-vae-ft-ema")
    env = scratch_env(tmp_path)

    def readme(start: str) -> str:
        (command,) = [c for c in STAND_INS if c.startswith(start)]
        return command

    def run_readme(command: str, **values) -> subprocess.CompletedProcess:
        return run(shell_command(command, STAND_INS[command], imagenet=imagenet, **values), cwd, env)

    extract, save_vae = readme("sdtgen extract-latents"), readme("python -c")
    train, multi_node = (
        readme("accelerate launch -q --multi_gpu --num_processes 8 scripts"),
        readme("accelerate launch -q --multi_gpu --num_machines"),
    )
    sample, evaluate = (
        readme("sdtgen sample --ckpt runs/imagenet256"),
        readme("accelerate launch -q --multi_gpu --num_processes 8 -m sdtgen.cli eval"),
    )
    run_readme(extract)
    manifest = json.loads((cwd / "cache" / "imagenet256-sd-vae-ft-ema" / "manifest.json").read_text())
    assert manifest["num_samples"] == 1000 and manifest["latent_shape"] == [4, 32, 32] and manifest["complete"]
    run_readme(save_vae)
    assert (cwd / "sd-vae-ft-ema" / "config.json").is_file()

    run_readme(train)
    run_dir = cwd / "runs" / "imagenet256_sdt_xl2"
    state = json.loads((run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["config"]["data"]["vae"] == "stabilityai/sd-vae-ft-ema"

    port = free_port()
    nodes = [
        subprocess.Popen(
            ["bash", "-c", shell_command(multi_node, STAND_INS[multi_node], imagenet=imagenet, rank=rank, port=port)],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (1, 0)
    ]
    for node in nodes:
        log, _ = node.communicate(timeout=600)
        assert node.returncode == 0, log[-3000:]
    state = json.loads((run_dir / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2 and state["samples_seen"] == 4 * 4

    run_readme(sample)
    assert len(list((cwd / "samples").glob("207-golden_retriever-*.png"))) == 4  # --num defaults to 4

    np.savez(
        cwd / "VIRTUAL_imagenet256_labeled.npz",
        arr_0=np.random.default_rng(1).integers(0, 256, (16, 256, 256, 3), dtype=np.uint8),
        mu=np.zeros(2048),
        sigma=np.eye(2048),
    )
    stand_in_inception_weights(cwd / "weights-inception-2015-12-05-6726825d.pth")
    run_readme(evaluate)
    metrics = json.loads((cwd / "eval" / "imagenet256_sdt_xl2" / "metrics.json").read_text())
    provenance = metrics["provenance"]
    assert all(np.isfinite(metrics[key]) for key in ("fid", "is", "kid", "precision", "recall"))
    assert provenance["feature_extractor"] == "inception-v3-compat"
    assert (provenance["num_samples"], provenance["labels"], provenance["steps"], provenance["guidance_scale"]) == (
        8,
        "uniform",
        250,
        1.5,
    )
    assert provenance["num_processes"] == 2


@pytest.mark.slow
def test_conversion_and_model_commands_run_with_stand_in_weights(tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = scratch_env(tmp_path)
    torch.save(original_state_dict(depth=1, width=384, patch=2, grid=4, num_classes=1000), cwd / "DiT-XL-2-256x256.pt")
    tiny_diffusers_dit(num_classes=1000).save_pretrained(cwd / "DiT-XL-2-256")
    for command in [c for c in STAND_INS if c.startswith("sdtgen convert")]:
        run(shell_command(command), cwd, env)
        out = cwd / command.split("--out ")[1]
        config = json.loads((out / "config.json").read_text())
        assert config["num_classes"] == 1000 and config["attention"] == (
            "sdt" if "--attention sdt" in command else "vanilla"
        )
    run(shell_command("python:import torch", STAND_INS["python:import torch"]), cwd, env)
    assert (cwd / "my-model" / "config.json").is_file()
