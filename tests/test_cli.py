"""The `sdtgen` command itself: a light parser, choices that agree with the library, flags named by the CLI, `sdtgen train`."""

import json
import os
import subprocess
import sys

import pytest
import torch

from sdtgen.cli import COMMANDS, build_parser, main, options
from sdtgen.config import load_config
from sdtgen.diffusion.sampling import DEFAULT_GUIDANCE, SAMPLERS, Guidance
from sdtgen.models.attention import ATTENTION_VARIANTS
from sdtgen.runs import (
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    LOG_FILE,
    MODEL_DIR,
    MissingInput,
    SampleSettings,
    find_source,
    list_checkpoints,
)
from test_training import TINY
from tiny_runs import random_model, write_run

HEAVY = ("torch", "diffusers", "accelerate", "torch_fidelity", "matplotlib")


def test_building_the_parser_imports_no_heavy_library():
    """`sdtgen --help` and `sdtgen COMMAND --help` build the whole parser: none of it may import torch and co."""
    code = f"import sys, sdtgen.cli; sdtgen.cli.build_parser(); print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_choices_listed_by_the_cli_are_the_librarys():
    assert options.ATTENTION_VARIANTS == ATTENTION_VARIANTS
    assert options.SAMPLERS == SAMPLERS
    assert options.SHOWN_DEFAULT_GUIDANCE == DEFAULT_GUIDANCE
    assert all(isinstance(options.torch_dtype(name), torch.dtype) for name in options.DTYPES)


@pytest.mark.parametrize("command", ["--help", *(name.replace("_", "-") + " --help" for name in COMMANDS)])
def test_help(command):
    result = subprocess.run(
        [sys.executable, "-m", "sdtgen.cli", *command.split()], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sdtgen")


def test_the_library_asks_for_keywords_and_the_cli_for_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no built-in run here
    with pytest.raises(MissingInput) as missing:
        find_source(None)
    assert missing.value.argument == "ckpt" and "pass ckpt=..." in str(missing.value) and "--" not in str(missing.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--out", str(tmp_path / "pipe")])
    assert exit_info.value.code == 2
    assert "pass --ckpt (a run, checkpoint, model or pipeline folder)" in capsys.readouterr().err


def test_sample_settings_are_each_flag_else_the_runs_else_the_librarys(tmp_path):
    """The one resolver `sdtgen sample` and `sdtgen eval` share, checked before any weights load."""
    run = find_source(write_run(tmp_path / "run", random_model(), overrides=("sample.sampler=ddpm",)))
    assert run.sample_settings() == SampleSettings("ddpm", 3, Guidance(2.5, None, (0.0, 0.8)))  # the run's sample:
    given = run.sample_settings("ddim", 7, 1.5, 3, [0.2, 0.6])
    assert given == SampleSettings("ddim", 7, Guidance(1.5, 3, (0.2, 0.6)))  # every flag given wins
    random_model().save_pretrained(tmp_path / "model")  # a model folder has no run settings
    assert find_source(tmp_path / "model").sample_settings() == SampleSettings(None, None, Guidance(DEFAULT_GUIDANCE))
    with pytest.raises(ValueError, match="steps must be at least 1"):
        run.sample_settings(steps=0)
    with pytest.raises(ValueError, match="guided channels must be 1..4"):
        run.sample_settings(guidance_channels=5)


def test_the_old_guidance_names_still_work(tmp_path):
    """Guidance was `cfg` before: the flags --cfg, --cfg-channels, --cfg-interval, the keys sample.cfg and
    sample.cfg_interval in overrides, and an old run's config.yaml with them all read as the guidance_* names."""
    parser = build_parser()
    for command in ("sample", "eval"):
        old = parser.parse_args([command, "--cfg", "1.5", "--cfg-channels", "3", "--cfg-interval", "0.1", "0.7"])
        new = ["--guidance-scale", "1.5", "--guidance-channels", "3", "--guidance-interval", "0.1", "0.7"]
        assert vars(old) == vars(parser.parse_args([command, *new]))
        shown = old.parser.format_help()
        assert "[--guidance-scale S]" in shown and "--cfg" in shown  # the new name first, the old one listed
    assert parser.parse_args(["inspect", "--class", "0", "--cfg", "2"]).guidance_scale == 2.0
    overrides = ("sample.cfg=1.5", "sample.cfg_interval=[0.1,0.7]")
    run = write_run(tmp_path / "run", random_model(), overrides=overrides)
    settings = SampleSettings(None, 3, Guidance(1.5, None, (0.1, 0.7)))
    assert find_source(run).sample_settings() == settings
    # A run written before the rename: its config.yaml says cfg, and its checkpoint records no config.
    config = run / CONFIG_FILE
    config.write_text(
        config.read_text().replace("guidance_scale:", "cfg:").replace("guidance_interval:", "cfg_interval:")
    )
    assert "  cfg: 1.5\n" in config.read_text()
    (list_checkpoints(run / "checkpoints")[0] / "trainer_state.json").write_text(json.dumps({"step": 2}))
    assert find_source(run).sample_settings() == settings
    assert load_config(config).sample.guidance() == settings.guidance


@pytest.mark.slow
def test_sdtgen_train_launches_a_training_run(tmp_path):
    """`sdtgen train` goes through accelerate's launcher (one process without a saved accelerate config, and
    without the launcher's note on that); a bad override ends in the one line and the child's exit status."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}  # HF_HOME: no saved accelerate config
    overrides = [f"output_dir={run_dir}", *TINY, "train.max_steps=2", "train.checkpoint_every=2"]
    result = subprocess.run(
        [sys.executable, "-m", "sdtgen.cli", "train", *overrides], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "were not passed to `accelerate launch`" not in result.stderr  # the launcher's defaults are the ones wanted
    for name in (CONFIG_FILE, LOG_FILE, CLASS_NAMES_FILE):
        assert (run_dir / name).is_file(), name
    assert [c.name for c in list_checkpoints(run_dir / "checkpoints")] == ["checkpoint-2"]
    assert (run_dir / "checkpoints" / "checkpoint-2" / MODEL_DIR / "config.json").is_file()
    assert [json.loads(line)["step"] for line in (run_dir / LOG_FILE).read_text().splitlines()] == [1, 2]
    bad = subprocess.run(
        [sys.executable, "-m", "sdtgen.cli", "train", "train.max_stpes=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "sdtgen train: error: Unknown config key 'train.max_stpes'" in bad.stderr
