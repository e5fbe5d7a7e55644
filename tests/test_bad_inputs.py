"""Bad inputs and faults: each ends in one clear line and a non-zero exit, or recovers (issue 14).

A case is one line: the arguments, the exit status (2: bad input, 1: the run failed) and a
substring of the one-line message. Commands run in-process through their entry points,
which is what a subprocess would run without paying for the imports each time; the launch
cases (marked slow) run real processes.
"""

import errno
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from doc_commands import free_port
from sdtgen.cli import main
from sdtgen.cli.errors import one_line_errors
from sdtgen.config import load_config
from sdtgen.distributed import check_launch
from sdtgen.models.dit import SDTDiT
from sdtgen.training import checkpoint as ckpt
from sdtgen.training.trainer import train
from test_training import TINY
from tiny_runs import REPO, random_model, write_run

ROOT = Path(__file__).resolve().parents[1]
TRAIN_GEN = ROOT / "scripts" / "train_gen.py"
HUGE = str(2**64)


def one_error_line(capsys, run, expected_status: int) -> str:
    """Run `run()`; check it exits with `expected_status` and prints one error line of its own (progress
    bars aside) and no traceback; return the line."""
    with pytest.raises(SystemExit) as exit_info:
        run()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert exit_info.value.code == expected_status, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith(("train_gen.py: error: ", "sdtgen ")) and "Traceback" not in err, (
        err[-2000:]
    )
    return lines[0]


def train_gen(monkeypatch, *argv: str):
    """scripts/train_gen.py run as `python scripts/train_gen.py ARGV`, in this process."""
    monkeypatch.setattr(sys, "argv", [str(TRAIN_GEN), *argv])
    return lambda: sys.exit(runpy.run_path(str(TRAIN_GEN), run_name="__main__"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """Bad config files and an RGB image folder."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "unparsable.yaml").write_text("train: [max_steps: 3\n")
    (root / "list.yaml").write_text("- train\n- model\n")
    (root / "binary.yaml").write_bytes(b"\xff\xfe\x00\x81binary")
    (root / "section.yaml").write_text("train: 3\n")
    for name in ("cat", "dog"):
        (root / "folder" / name).mkdir(parents=True)
        Image.new("RGB", (40, 40), "red").save(root / "folder" / name / "a.png")
    (root / "empty").mkdir()
    return root


CONFIG_CASES = [
    # arguments of train_gen.py ({files}: the fixture's folder), exit status, substring of the message
    (["train.max_steps=abc"], 2, "'train.max_steps' must be an integer, got 'abc'"),
    (["train.max_steps=2.5"], 2, "'train.max_steps' must be an integer, got 2.5"),
    (["train.max_steps=0"], 2, "train.max_steps must be at least 1"),
    (["train.global_batch_size=0"], 2, "train.global_batch_size must be at least 1"),
    (["train.checkpoint_every=0"], 2, "train.checkpoint_every must be at least 1"),
    (["train.log_every=-1"], 2, "train.log_every must be at least 1"),
    (["train.keep_checkpoints=-1"], 2, "train.keep_checkpoints must be at least 0"),
    (["train.eval_samples=0"], 2, "train.eval_samples must be at least 1"),
    (["train.lr=abc"], 2, "'train.lr' must be a number"),
    (["train.lr=0"], 2, "train.lr must be in (0, 1)"),
    (["train.lr=1e308"], 2, "train.lr must be in (0, 1)"),
    (["model.mlp_ratio=0"], 2, "model.mlp_ratio must be positive"),
    (["train.lr=.nan"], 2, "'train.lr' must be a number"),
    (["train.ema_decay=1"], 2, "train.ema_decay must be in [0, 1)"),
    (["train.ema_std=0.5"], 2, "train.ema_std must be in (0, 0.2887)"),
    (["sample.guidance_interval=[0.9,0.1]"], 2, "sample.guidance_interval needs 0 <= LOW <= HIGH <= 1"),
    (["sample.cfg_interval=[0.9,0.1]"], 2, "sample.guidance_interval needs 0 <= LOW <= HIGH <= 1"),  # its old name
    (["sample.cfg=2", "sample.guidance_scale=3"], 2, "'sample.cfg' is the old name of 'sample.guidance_scale'"),
    (["train.betas=[0.9]"], 2, "'train.betas' must be a list of 2"),
    (["train.tf32=yes please"], 2, "'train.tf32' must be true or false"),
    (["train.micro_batch_size=abc"], 2, "must be an integer or null"),
    (["train.mixed_precision=fp8"], 2, "train.mixed_precision must be one of auto, no, bf16, fp16"),
    (["model.attention=linear"], 2, "model.attention must be one of vanilla"),
    (["model.attention_backend=cuda"], 2, "model.attention_backend must be one of"),
    (["model.preset=Z/3"], 2, "model.preset must be one of"),
    (["model.learn_sigma=true"], 2, "only applies to objective=ddpm"),
    (["data.on_error=ignore"], 2, "data.on_error must be one of raise, skip"),
    (["objective=edm"], 2, "objective must be one of ddpm, flow"),
    (["flow.time_sampling=normal"], 2, "flow.time_sampling must be one of uniform, logit_normal"),
    (["sample.sampler=ddim"], 2, "does not fit objective=flow"),
    (["sample.classes=[1, cat]"], 2, "'sample.classes' must be a list of (an integer) or null"),
    (["output_dir=3"], 2, "'output_dir' must be a string"),
    (["train.max_step=3"], 2, "Unknown config key 'train.max_step'"),
    (["train=3"], 2, "is a section"),
    (["train.max_steps"], 2, "not of the form key=value"),
    (["--config", "{files}/missing.yaml"], 2, "missing.yaml does not exist"),
    (["--config", "{files}/unparsable.yaml"], 2, "unparsable.yaml is not valid YAML"),
    (["--config", "{files}/binary.yaml"], 2, "binary.yaml is not valid YAML"),
    (["--config", "{files}/list.yaml"], 2, "list.yaml must hold a mapping"),
    (["--config", "{files}/section.yaml"], 2, "Config key 'train' is a section"),
    (["data.dataset={files}/folder"], 2, "data.vae=builtin is made for the animals set"),
]


@pytest.mark.parametrize("argv, status, message", CONFIG_CASES, ids=[" ".join(c[0]) for c in CONFIG_CASES])
def test_train_gen_config_errors(files, monkeypatch, capsys, argv, status, message):
    argv = [a.format(files=files) for a in argv]
    assert message in one_error_line(capsys, train_gen(monkeypatch, *argv), status)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-step run with checkpoints 1 and 2."""
    root = tmp_path_factory.mktemp("finished") / "run"
    return train(load_config(None, [f"output_dir={root}", *TINY, "train.max_steps=2", "train.checkpoint_every=1"]))


def damaged_copy(run_dir: Path, to: Path, damage: str) -> Path:
    """A copy of `run_dir` whose checkpoint-2 has `damage`."""
    shutil.copytree(run_dir, to)
    checkpoint = to / "checkpoints" / "checkpoint-2"
    if damage == "missing optimizer":
        (checkpoint / "optimizer.pt").unlink()
    elif damage == "corrupt optimizer":
        (checkpoint / "optimizer.pt").write_bytes(b"not a torch file")
    elif damage in ("truncated weights", "truncated ema weights"):
        file = (
            checkpoint
            / {
                "truncated weights": "training_model.safetensors",
                "truncated ema weights": "model/diffusion_pytorch_model.safetensors",
            }[damage]
        )
        file.write_bytes(file.read_bytes()[:100])
    elif damage in ("nan weights", "nan ema weights"):
        file = checkpoint / (
            "model/diffusion_pytorch_model.safetensors" if damage == "nan ema weights" else "training_model.safetensors"
        )
        save_file({k: torch.full_like(v, float("nan")) for k, v in load_file(file).items()}, file)
    return to


TRAINER_CASES = [
    # what is wrong, arguments (after the tiny run's), exit status, substring of the message
    ("no dataset folder", ["data.dataset={tmp}/nope"], 2, "is neither 'animals' nor an image folder"),
    ("empty dataset folder", ["data.dataset={files}/empty"], 2, "Couldn't find any class folder"),
    ("resume path missing", ["train.resume={tmp}/nope"], 2, "is not a checkpoint folder"),
    ("resume: optimizer.pt missing", ["train.resume=latest", "damage=missing optimizer"], 1, "is unreadable"),
    ("resume: optimizer.pt corrupt", ["train.resume=latest", "damage=corrupt optimizer"], 1, "is unreadable"),
    ("resume: NaN weights", ["train.resume=latest", "damage=nan weights"], 2, "holds non-finite weights"),
    (
        "resume: NaN EMA weights",
        ["train.resume=latest", "damage=nan ema weights"],
        2,
        "diffusion_pytorch_model.safetensors holds non-finite",
    ),
    (
        "pretrained: NaN weights",
        ["model.pretrained={run}/checkpoints/checkpoint-2/model", "damage=nan ema weights"],
        2,
        "holds non-finite weights",
    ),
    ("resume: training weights truncated", ["train.resume=latest", "damage=truncated weights"], 1, "is unreadable"),
    ("resume: EMA weights truncated", ["train.resume=latest", "damage=truncated ema weights"], 1, "is unreadable"),
    ("resume: other depth", ["train.resume=latest", "model.depth=3"], 2, "holds a model of another shape"),
    ("resume: other objective", ["train.resume=latest", "objective=flow"], 2, "holds a model of another shape"),
    ("pretrained: no folder", ["model.pretrained={tmp}/nope"], 2, "is not an SDTDiT folder"),
    ("output_dir is a file", ["output_dir={files}/list.yaml"], 2, "is a file, not a folder"),
    ("resume: other global batch", ["train.resume=latest", "train.global_batch_size=4"], 2, "data order would change"),
    ("micro batch does not divide", ["train.micro_batch_size=3"], 2, "multiple of train.micro_batch_size=3"),
    (
        "disk full while saving",
        ["train.max_steps=3", "train.resume=latest", "fault=disk full"],
        1,
        "No space left on device",
    ),
]


@pytest.mark.parametrize("case, argv, status, message", TRAINER_CASES, ids=[c[0] for c in TRAINER_CASES])
def test_train_gen_runtime_errors(finished_run, files, tmp_path, monkeypatch, capsys, case, argv, status, message):
    options = dict(a.split("=", 1) for a in argv if a.startswith(("damage=", "fault=")))
    run_dir = damaged_copy(finished_run, tmp_path / "run", options.get("damage", ""))
    if options.get("fault") == "disk full":
        monkeypatch.setattr(ckpt.torch, "save", _raise(OSError(errno.ENOSPC, "No space left on device")))
    overrides = [
        a.format(tmp=tmp_path, files=files, run=run_dir) for a in argv if not a.startswith(("damage=", "fault="))
    ]
    command = train_gen(monkeypatch, f"output_dir={run_dir}", *TINY, "train.max_steps=2", *overrides)
    assert message in one_error_line(capsys, command, status)


def _raise(error: Exception):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny DDPM run, the same with NaN weights, and a folder of samples of two sizes."""
    root = tmp_path_factory.mktemp("cli")
    good = write_run(root / "good", random_model("ddpm"))
    nan_model = random_model("ddpm")
    with torch.no_grad():
        next(nan_model.parameters()).fill_(float("nan"))
    mixed = root / "mixed"
    mixed.mkdir()
    Image.new("RGB", (32, 32)).save(mixed / "0-a.png")
    Image.new("RGB", (16, 16)).save(mixed / "1-b.png")
    return {"good": good, "nan": write_run(root / "nan", nan_model), "mixed": mixed}


CLI_CASES = [
    # sdtgen arguments ({good}, {nan}, {mixed}: the fixture's folders, {out}: a fresh folder), status, message
    (["inspect", "--ckpt", "{good}", "--class", "cat", "--timestep", "-500"], 2, "--timestep must be in 0..1000"),
    (["inspect", "--ckpt", "{good}", "--class", "cat", "--timestep", "1500"], 2, "--timestep must be in 0..1000"),
    (["inspect", "--ckpt", "{good}", "--class", "cat", "--seed", HUGE], 2, "--seed must be in 0.."),
    (["inspect", "--ckpt", "{nan}", "--class", "cat"], 2, "holds non-finite weights"),
    (["sample", "--ckpt", "{good}", "--seed", HUGE], 2, "--seed must be in 0.."),
    (["sample", "--ckpt", "{good}", "--seed", "-1"], 2, "--seed must be in 0.."),
    (["sample", "--ckpt", "{nan}"], 2, "diffusion_pytorch_model.safetensors holds non-finite weights"),
    (["export", "--ckpt", "{nan}"], 2, "holds non-finite weights"),
    (["eval", "--ckpt", "{good}", "--seed", HUGE], 2, "--seed must be in 0.."),
    (["eval", "--ckpt", "{nan}", "--num-samples", "2"], 2, "holds non-finite weights"),
    (["eval", "--ckpt", "{good}", "--ref", "bogus"], 2, "--ref: The reference bogus is not 'animals'"),
    (["eval", "--samples", "{mixed}"], 2, "1-b.png is 16x16 with 3 channels but 0-a.png is 32x32"),
]


@pytest.mark.parametrize("argv, status, message", CLI_CASES, ids=[" ".join(c[0][:1] + c[0][3:]) for c in CLI_CASES])
def test_sdtgen_errors(runs, tmp_path, capsys, argv, status, message):
    out = tmp_path / "out"
    argv = [a.format(out=out, **runs) for a in argv]
    if argv[0] in ("sample", "export", "inspect", "eval"):
        argv += ["--out", str(out / "x.png" if argv[0] == "inspect" else out)]
    line = one_error_line(capsys, lambda: main(argv), status)
    assert message in line and "Inception" not in line
    assert not out.exists()  # checked before anything is written


def test_non_finite_samples_are_an_error_not_black_images(runs, tmp_path, capsys, monkeypatch):
    from sdtgen.pipeline import SDTPipeline

    real = SDTPipeline.__call__

    def overflowing(self, *args, **kwargs):
        output = real(self, *args, **kwargs)
        output.images[:] = float("inf")
        return output

    monkeypatch.setattr(SDTPipeline, "__call__", overflowing)
    out = tmp_path / "out"
    line = one_error_line(
        capsys,
        lambda: main(["sample", "--ckpt", str(runs["good"]), "--class", "cat", "--num", "1", "--out", str(out)]),
        1,
    )
    assert "came out non-finite" in line
    assert not list(out.glob("*.png"))


def test_only_rank_0_speaks(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_info, one_line_errors("prog"):
        raise ValueError("train.global_batch_size=7 must divide evenly over 2 processes")
    assert exit_info.value.code == 2 and capsys.readouterr().err == ""


def test_a_worker_traceback_is_cut_to_its_last_line(capsys):
    message = "Caught CorruptImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File x\nsdtgen.data.folders.CorruptImageError: a.png is corrupt"
    with pytest.raises(SystemExit) as exit_info, one_line_errors("prog"):
        raise RuntimeError(message)
    assert exit_info.value.code == 1 and capsys.readouterr().err == "prog: error: a.png is corrupt\n"


def test_cpu_processes_that_did_not_join_are_stopped(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 3"):
        check_launch(1)
    check_launch(3)  # joined: fine


@pytest.mark.slow
@pytest.mark.parametrize(
    "use_cpu, overrides, expected",
    [
        ("1", ["train.global_batch_size=7"], "must divide evenly over 2 processes"),
        ("0", [], "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2"),
    ],
)
def test_launch_errors_are_one_line_from_rank_0(tmp_path, use_cpu, overrides, expected):
    if torch.cuda.is_available() and use_cpu == "0":
        pytest.skip("with a GPU the processes join")
    env = {**os.environ, "ACCELERATE_USE_CPU": use_cpu, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(  # what `accelerate launch --multi_gpu --num_processes 2` runs
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            str(TRAIN_GEN),
            f"output_dir={tmp_path}",
            *TINY,
            "train.max_steps=1",
            *overrides,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )
    errors = [line for line in result.stderr.splitlines() if "train_gen.py: error:" in line]
    assert result.returncode != 0 and len(errors) == 1 and expected in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr.split("train_gen.py: error:")[0]


def test_debug_lets_the_error_through_with_its_traceback(monkeypatch):
    monkeypatch.setenv("SDTGEN_DEBUG", "1")
    with pytest.raises(ValueError, match="must be an integer"):
        train_gen(monkeypatch, "train.max_steps=abc")()
    with pytest.raises(ValueError, match="--timestep must be in 0..1000"):
        main(["inspect", "--class", "cat", "--timestep", "-1"])


# ---------------------------------------------------------------- checkpoint swap faults


def save(run_dir: Path, step: int, marker: float) -> Path:
    """Save checkpoint-<step> of a model whose weights are all `marker`, as the trainer does."""
    model = SDTDiT.from_pretrained(run_dir / "checkpoints" / "checkpoint-2" / "model")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(marker)
    return ckpt.save_checkpoint(
        run_dir / "checkpoints",
        step,
        ema_model=model,
        training_model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        scaler=None,
        trainer_state={"step": step, "marker": marker},
        keep=5,
    )


def marker_of(checkpoint: Path) -> float:
    return json.loads((checkpoint / "trainer_state.json").read_text())["marker"]


@pytest.mark.parametrize(
    "failing_call, expected_marker",
    [
        (1, 1.0),  # moving the old checkpoint aside: the old one stays
        (2, 2.0),  # renaming the new one in (old aside, new complete): recovery renames the new one in
    ],
)
def test_a_failed_swap_leaves_a_complete_checkpoint_that_the_next_save_recovers(
    finished_run, tmp_path, monkeypatch, failing_call, expected_marker
):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    save(run_dir, 3, 1.0)
    calls = []
    real = os.replace

    def replace(source, target):
        if Path(source).parent == run_dir / "checkpoints":  # the swap's renames, not those of library code
            calls.append(source)
        if len(calls) == failing_call and calls[-1] == source:
            raise OSError(errno.EIO, "killed here")
        return real(source, target)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(OSError, match="killed here"):
        save(run_dir, 3, 2.0)  # re-saving step 3
    monkeypatch.setattr(ckpt.os, "replace", real)
    latest = ckpt.resolve_resume("latest", run_dir / "checkpoints")
    assert latest.name == "checkpoint-3" and marker_of(latest) == expected_marker
    assert ckpt.load_training_state(latest)[0]  # complete and loadable
    save(run_dir, 4, 3.0)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-4",
    ]


def test_a_failed_delete_of_the_old_copy_is_finished_by_recovery(finished_run, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    save(run_dir, 3, 1.0)
    monkeypatch.setattr(ckpt.shutil, "rmtree", lambda *args, **kwargs: None)  # killed before the old copy went
    save(run_dir, 3, 2.0)
    assert (run_dir / "checkpoints" / ".old-checkpoint-3").is_dir()
    monkeypatch.undo()
    assert marker_of(ckpt.resolve_resume("latest", run_dir / "checkpoints")) == 2.0
    assert not (run_dir / "checkpoints" / ".old-checkpoint-3").exists()


def test_an_aside_copy_without_replacement_is_restored(finished_run, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.copytree(finished_run, tmp_path / "run")
    os.replace(checkpoints / "checkpoint-2", checkpoints / ".old-checkpoint-2")
    (checkpoints / ".tmp-checkpoint-2").mkdir()  # incomplete: no trainer_state.json
    assert ckpt.resolve_resume("latest", checkpoints).name == "checkpoint-2"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2"]


def test_a_half_deleted_checkpoint_is_never_picked(finished_run, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.copytree(finished_run, tmp_path / "run")
    (checkpoints / "checkpoint-2" / "trainer_state.json").unlink()
    assert ckpt.resolve_resume("latest", checkpoints).name == "checkpoint-1"


def test_the_complete_copy_replaces_a_checkpoint_half_deleted_by_an_older_version(finished_run, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    shutil.copytree(finished_run, tmp_path / "run")
    shutil.copytree(checkpoints / "checkpoint-2", checkpoints / ".tmp-checkpoint-2")
    shutil.rmtree(checkpoints / "checkpoint-2" / "model")  # the old in-place rmtree, killed halfway
    (checkpoints / "checkpoint-2" / "trainer_state.json").unlink()
    latest = ckpt.resolve_resume("latest", checkpoints)
    assert latest.name == "checkpoint-2" and (latest / "model").is_dir()
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2"]


# ---------------------------------------------------------------- killed before the final grid


def test_a_run_killed_before_its_final_grid_writes_it_on_resume(finished_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    grid = run_dir / "samples" / "grid-0000002.png"
    grid.unlink()
    (run_dir / "loss.png").unlink()
    again = [f"output_dir={run_dir}", *TINY, "train.max_steps=2", "train.resume=latest"]
    train(load_config(None, again))
    assert grid.is_file() and (run_dir / "loss.png").is_file()
    assert "wrote its missing sample grid" in capsys.readouterr().out
    written = grid.stat().st_mtime
    train(load_config(None, again))
    assert grid.stat().st_mtime == written  # complete: nothing is redone


@pytest.mark.skipif(torch.cuda.is_available(), reason="flex trains on a GPU")
def test_flex_on_cpu_is_refused_before_the_data_is_prepared(tmp_path, monkeypatch, capsys):
    command = train_gen(monkeypatch, f"output_dir={tmp_path / 'run'}", *TINY, "model.attention_backend=flex")
    assert "model.attention_backend=flex cannot train on CPU" in one_error_line(capsys, command, 2)
    assert not (tmp_path / "run").exists()  # stopped before writing anything


# ---------------------------------------------------------------- files given to the commands


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--ckpt", "{good}"],
        ["export", "--ckpt", "{good}"],
        ["eval", "--ckpt", "{good}"],
        ["convert", "--from", "dit", "{good}/x.pt"],
        ["extract-latents", "--data", "animals"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_out_folder_that_is_a_file_is_refused_before_any_work(runs, tmp_path, capsys, argv):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    command = [a.format(**runs) for a in argv] + ["--out", str(taken)]
    assert "is a file; give a folder" in one_error_line(capsys, lambda: main(command), 2)
    assert taken.read_text() == "mine"


def test_a_run_with_a_corrupt_config_yaml_is_named(runs, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs["good"], run_dir)
    state = run_dir / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    state.write_text(json.dumps({"step": 2}))  # an older checkpoint: the config comes from config.yaml
    (run_dir / "config.yaml").write_text(": : :")
    line = one_error_line(capsys, lambda: main(["sample", "--ckpt", str(run_dir), "--out", str(tmp_path / "o")]), 2)
    assert "config.yaml is unreadable or not valid YAML" in line


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory) -> Path:
    """Sample sets and weights as users hand them to `sdtgen eval`: some damaged, one of floats."""
    root = tmp_path_factory.mktemp("samples")
    (root / "junk.npz").write_bytes(b"not an npz")
    images = np.zeros((4, 32, 32, 1), np.uint8)
    np.savez(root / "float.npz", arr_0=images.astype(np.float32) / 255, arr_1=np.arange(4))
    np.savez(root / "good.npz", arr_0=images, arr_1=np.arange(4))
    np.savez(root / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    (root / "pngs").mkdir()
    (root / "pngs" / "0-a.png").write_text("not a png")
    (root / "inception.pth").write_bytes(b"truncated")
    return root


EVAL_FILE_CASES = [
    # --samples, further arguments, exit status, substring of the message
    ("junk.npz", [], 2, "junk.npz is not a readable .npz file"),
    ("float.npz", [], 2, "images must be uint8 0..255, got torch.float32 values in [0, 0]"),
    ("pngs", [], 2, "0-a.png is not a readable image"),
    (
        "good.npz",
        ["--ref", "{root}/stats.npz", "--inception-weights", "{root}/inception.pth"],
        2,
        "is unreadable or corrupt",
    ),
    (
        "good.npz",
        ["--ref", "{root}/junk.npz", "--inception-weights", "{root}/inception.pth"],
        2,
        "is not a readable .npz",
    ),
]


@pytest.mark.parametrize(
    "samples, argv, status, message", EVAL_FILE_CASES, ids=[f"{c[0]} {c[3]}" for c in EVAL_FILE_CASES]
)
def test_eval_files_that_cannot_be_read_are_named(sample_files, tmp_path, capsys, samples, argv, status, message):
    command = ["eval", "--samples", str(sample_files / samples), "--out", str(tmp_path / "out")]
    command += [a.format(root=sample_files) for a in argv]
    assert message in one_error_line(capsys, lambda: main(command), status)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- caches


def test_a_corrupt_reference_feature_cache_is_computed_again(tmp_path, monkeypatch, caplog):
    from sdtgen.evaluation.metrics import compute_metrics

    monkeypatch.setenv("SDTGEN_CACHE_DIR", str(tmp_path))
    images, labels = np.zeros((4, 32, 32, 1), np.uint8), np.arange(4)
    first = compute_metrics(images, labels, fid_and_accuracy_only=True)["fid"]
    (cached,) = tmp_path.rglob("*.safetensors")
    cached.write_bytes(b"truncated")
    assert compute_metrics(images, labels, fid_and_accuracy_only=True)["fid"] == pytest.approx(first)
    assert "unreadable" in caplog.text and load_file(cached)["features"].shape[0] == 9000


# ---------------------------------------------------------------- library calls


@pytest.fixture(scope="module")
def vae():
    from sdtgen.vae import load_vae

    return load_vae("builtin")


IMAGE_CASES = [
    # images given to the VAE, substring of the message
    (
        lambda: torch.zeros(2, 1, 32, 32, dtype=torch.uint8),
        "torch.uint8 tensor (0..255: pass images.float() / 127.5 - 1)",
    ),
    (lambda: torch.full((2, 1, 32, 32), 200.0), "as 0..255 images do: pass images / 127.5 - 1"),
    (lambda: torch.rand(2, 1, 32, 32), "as images in [0, 1]"),
    (lambda: torch.full((2, 1, 32, 32), float("nan")), "NaN or inf"),
    (lambda: np.zeros((2, 1, 32, 32), np.float32), "got a ndarray"),
]


@pytest.mark.parametrize("make, message", IMAGE_CASES, ids=["uint8", "0..255", "0..1", "nan", "numpy"])
def test_the_vae_says_which_images_it_takes(vae, make, message):
    with pytest.raises(ValueError, match="takes float images in \\[-1, 1\\]") as error:
        vae.encode_moments(make())
    assert message in str(error.value)
    vae.encode_moments(torch.rand(2, 1, 32, 32) * 2 - 1)  # [-1, 1]: fine


def test_decode_takes_float_latents(vae):
    with pytest.raises(ValueError, match="decode takes float latents"):
        vae.decode(torch.zeros(1, vae.latent_channels, 8, 8, dtype=torch.long))


def test_the_metrics_say_which_images_and_labels_they_take(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    from sdtgen.evaluation.metrics import compute_metrics, to_nchw_uint8

    with pytest.raises(ValueError, match=r"\(images \* 255\)\.round\(\)"):
        to_nchw_uint8(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(\(images \+ 1\) \* 127\.5\)"):
        to_nchw_uint8(torch.rand(2, 3, 8, 8) * 2 - 1)
    pil = [PILImage.new("L", (8, 8), 255)] * 2  # a pipeline's output_type='pil'
    assert to_nchw_uint8(pil).shape == (2, 1, 8, 8)
    monkeypatch.setenv("SDTGEN_CACHE_DIR", str(tmp_path))
    images = np.zeros((4, 32, 32, 1), np.uint8)
    for labels, message in ((np.array([0.5, 1, 2, 3]), "integer class ids"), (np.ones(4, bool), "integer class ids")):
        with pytest.raises(ValueError, match=message):
            compute_metrics(images, labels, fid_and_accuracy_only=True)


def test_the_pipeline_and_sampling_say_which_labels_they_take(runs):
    from sdtgen.diffusion.sampling import Guidance, denoise
    from sdtgen.generation import generate
    from sdtgen.runs import find_source, load_pipeline

    pipe = load_pipeline(find_source(runs["good"]))
    kwargs = dict(num_inference_steps=1, output_type="latent", generator=torch.manual_seed(0))
    for labels, message in (
        ([2.0], "integer id or a name, got 2.0"),
        ([True], "got the boolean True"),
        (torch.tensor([1.5]), "integer id or a name, got 1.5"),
        ([], "class_labels is empty"),
        ([10], "outside this model's range 0..9"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            pipe(class_labels=labels, **kwargs)
    assert pipe(class_labels=torch.tensor([1, 2]), **kwargs).images.shape[0] == 2  # tensors of ids are fine
    for labels, message in ((torch.tensor([0, 10]), "class ids in 0..9, got 0..10"), (torch.tensor([0.0]), "integer")):
        with pytest.raises(ValueError, match=message):
            denoise(pipe.transformer, pipe.scheduler, labels, steps=1, guidance=Guidance(1.0))
    with pytest.raises(ValueError, match="Sample indices must be in 0..1"):
        generate(pipe, [0, 1], [-1], seed=0, batch_size=1, steps=1)


# ---------------------------------------------------------------- two runs, one folder


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A real process holding `run_dir`'s lock, as a training run does; returns once it holds it."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from sdtgen.training.run_lock import RunLock; RunLock.acquire(sys.argv[1]); "
            "print('held', flush=True); time.sleep(300)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_on_a_folder_in_use_stops_and_a_stale_lock_is_taken_over(
    finished_run, tmp_path, monkeypatch, capsys, caplog
):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    holder = hold_lock(run_dir)
    try:
        again = [f"output_dir={run_dir}", *TINY, "train.max_steps=3", "train.resume=latest"]
        line = one_error_line(capsys, train_gen(monkeypatch, *again), 1)
        assert f"is being trained into by process {holder.pid}" in line
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert (run_dir / ".lock").is_file()  # killed: the lock file stays, its lock is free
    train(load_config(None, again))
    assert f"took over the lock of process {holder.pid}" in caplog.text
    assert ckpt.resolve_resume("latest", run_dir / "checkpoints").name == "checkpoint-3"
    assert not (run_dir / ".lock").exists()  # released at the end


# ---------------------------------------------------------------- the launcher


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, prog",
    [
        ([sys.executable, "-m", "sdtgen.cli", "train"], "sdtgen train"),
        # The README's: `accelerate config default` once, then the quiet launcher.
        (["accelerate", "launch", "-q", str(REPO / "scripts" / "train_gen.py")], "train_gen.py"),
    ],
    ids=["sdtgen train", "accelerate launch -q"],
)
def test_a_bad_run_through_the_launcher_ends_with_the_one_line(tmp_path, command, prog):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}  # sdtgen train: no saved config
    if prog == "train_gen.py":
        subprocess.run(["accelerate", "config", "default"], env=env, check=True, capture_output=True)
    result = subprocess.run(
        [*command, f"output_dir={tmp_path / 'run'}", *TINY, "model.preset=Z/3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode in (1, 2), result.stderr  # accelerate's quiet launcher exits 1 for any failure
    assert lines[-1].startswith(f"{prog}: error: model.preset must be one of"), result.stderr
    assert len(lines) == 1, result.stderr  # no launcher note before it, no traceback after it
