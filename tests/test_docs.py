"""Every command in docs/*.md is run, so the pages cannot go stale (tests/test_readme.py does the same for the README).

The ```bash blocks and the inline `sdtgen ...` / `accelerate ...` / `python ...` commands of
each page are read from the page itself. Each command must have exactly one plan here, and a
plan for a command a page no longer has is an error too:

- ``PAGES[page]``: run in the listed order, in one scratch folder per page, each verbatim or
  with the plain-text stand-ins given next to it: for what this machine lacks (ImageNet,
  GPUs, the hub's weights, the Inception weights) and to shrink long jobs (steps, samples,
  model size). Files a page names are made under those names with the real layout and tiny
  random contents (tests/stand_ins.py); `FOLDER`, a page's name for your image folder, is
  such a folder in the scratch folder, and `~` is a scratch home.
- A command that README.md shows too is run by tests/test_readme.py (or, for the main job,
  by .ci/run).
- ``SAME_AS``: a command that the listed replacements turn into one that runs (here or in
  tests/test_readme.py): it differs only in names, paths and counts, or in options that
  other runs cover. Each would cost seconds of start-up for no new code path.
- ``NOT_RUN``: why a command cannot run here, or is a usage pattern rather than a command.

The pages' Python blocks are examples with free names (`samples`, `generator`) rather than
programs, and are not run. The runs are slow-marked; `pytest -m "not slow"` checks the plans only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from doc_commands import (
    EIGHT_GPUS,
    README,
    built_in_run,
    link_repo_folders,
    markdown_commands,
    run,
    scratch_env,
    shell_command,
)
from stand_ins import (
    cache_hub_vae,
    dit_hub_folder,
    image_folder,
    stand_in_imagenet,
    stand_in_inception_weights,
    tiny_sd_vae,
)
from tiny_runs import REPO, random_model, write_run

DOCS = REPO / "docs"
IMAGENET_CLASSES = [f"n{index:08d}" for index in range(1000)]  # stand_in_imagenet's folder names

# Shrinking stand-ins shared by several commands.
TINY_MODEL = " model.depth=1 model.hidden_size=64 model.num_heads=2"
SHORT_RUN = "train.max_steps=2 train.global_batch_size=4 train.checkpoint_every=2 sample.steps=2 sample.per_class=1"
LADDER_SHRUNK = (
    "--rows base +swiglu --seeds 0 --steps 2 --out runs/ladder-test --results runs/ladder-test.json --set "
    "data.vae=identity data.latent_cache=null model.preset=S/4 model.depth=1 model.hidden_size=32 model.num_heads=2 "
    "train.eval_samples=20 train.eval_steps=2 train.mixed_precision=no sample.per_class=1 sample.steps=2"
)
# A pretrained DiT's 1,000 classes need 1,000 class folders (the page says so): the stand-in
# ImageNet, at 64 px (8x8 latents, the stand-in DiTs' size) so that encoding it stays short.
IMAGENET_64 = "data.dataset={imagenet} data.image_size=64"

# The 2023 ablation shrunk: 2 steps a run, 3 variants x 2 seeds, 20 samples of one sampler step, one cost round
# (tests/test_ablation.py runs the current study so).
ABLATION_SHRUNK = (
    " --steps 2 --eval-every 1 --eval-samples 20 --eval-steps 1 --seeds 0 1 --variants vanilla fixed sdt"
    " --spread-seeds 2 --noise-levels 0.5 --cost-repeats 1"
)

# page -> its commands in the order they run, each with its stand-ins ((page text, what runs instead), ...).
PAGES: dict[str, tuple[tuple[str, tuple[tuple[str, str], ...]], ...]] = {
    "benchmarks.md": (
        # A tiny model, one round, the sdt rows (bench_model) or fp32 only (bench_sampling).
        (
            "python benchmarks/bench_model.py --preset T/2 --input-size 16 --batch 128 --repeats 7 --markdown",
            (("--input-size 16 --batch 128 --repeats 7", "--input-size 8 --batch 2 --repeats 1 --variants sdt"),),
        ),
        (
            "python benchmarks/bench_sampling.py --preset T/2 --input-size 16 --batch 8 --steps 2 --repeats 2 --dtype fp32 bf16 "
            "--markdown",
            (
                ("--input-size 16 --batch 8", "--input-size 8 --batch 2"),
                ("--repeats 2", "--repeats 1"),
                ("--dtype fp32 bf16", "--dtype fp32"),
            ),
        ),
        # 1,000 files, one launch; not --old, whose checkout `git worktree add` (not run) would make.
        (
            "python benchmarks/bench_startup.py --root /tmp/sdtgen-startup --sizes 10000 100000 1000000 --old /tmp/base "
            "--repeats 3",
            (
                ("/tmp/sdtgen-startup", "{tmp}/startup"),
                ("--sizes 10000 100000 1000000", "--sizes 1000"),
                ("--old /tmp/base ", ""),
                ("--repeats 3", "--repeats 1"),
            ),
        ),
        # One round of one step of a one-block model.
        (
            "python benchmarks/bench_train_step.py",
            (
                (
                    "bench_train_step.py",
                    "bench_train_step.py --steps 1 --rounds 1 data.vae=identity data.latent_cache=null "
                    "model.preset=S/4 model.depth=1 model.hidden_size=32 model.num_heads=2 train.mixed_precision=no",
                ),
            ),
        ),
    ),
    "evaluation.md": (
        # 20 samples: the main job's own evaluation samples 1,000.
        (
            "sdtgen eval --ckpt runs/animals-sdt --num-samples 1000 --steps 25 --out eval/animals-sdt",
            (("--num-samples 1000", "--num-samples 20"),),
        ),
        ("sdtgen eval --samples eval/animals-sdt/samples.npz", ()),
    ),
    # ~/imagenet: a 10-class stand-in; stabilityai/sd-vae-ft-ema and ~/sd-vae-ft-ema: one tiny VAE.
    "latents.md": (
        ("sdtgen extract-latents", ()),
        (
            "sdtgen extract-latents --data ~/imagenet --split train --vae stabilityai/sd-vae-ft-ema "
            "--out cache/imagenet256-latents",
            (),
        ),
        (
            "accelerate launch -m sdtgen.cli extract-latents --data ~/imagenet --split train --vae ~/sd-vae-ft-ema "
            "--out cache/imagenet256-latents",
            (),
        ),
        ("sdtgen extract-latents --verify --out cache/imagenet256-latents", ()),
    ),
    "ablation.md": (
        ("python scripts/ablation.py --study dit2023", (("--study dit2023", "--study dit2023" + ABLATION_SHRUNK),)),
        ("python scripts/ablation.py --study dit2023 --report-only --publish docs/ablation", ()),
    ),
    "recipe.md": (
        # Two rows of the ladder on a tiny pixel-space model, 2 steps, scored on 20 samples,
        # into their own results file; then the table of the committed results.
        ("python scripts/sweep_recipe.py --seeds 0 1", (("--seeds 0 1", LADDER_SHRUNK),)),
        ("python scripts/sweep_recipe.py --table", ()),
    ),
    "sampling.md": (
        # runs/animals-sdt as in evaluation.md; one step a sampler and 20 samples a point.
        ("python scripts/sampler_curve.py --help", ()),
        (
            "python scripts/sampler_curve.py --ckpt runs/animals-sdt --num-samples 1000 --out docs/sampler_curve",
            (("--num-samples 1000", "--num-samples 20 --nfe 1 --guidance-steps 1 --guidance-scales 1 2"),),
        ),
        # runs/imagenet256_sdt_xl2: a tiny 1000-class model with the stand-in SD VAE.
        (
            "accelerate launch --multi_gpu --num_processes 8 -m sdtgen.cli sample --ckpt runs/imagenet256_sdt_xl2 "
            "--class 207 --class 360 --num 64 --batch-size 32 --out samples/xl2",
            (EIGHT_GPUS, ("--num 64", "--num 4"), ("--batch-size 32", "--batch-size 2")),
        ),
        # DiT-XL-2-256/: what the page's `hf download` leaves, with a tiny DiT and VAE.
        ("sdtgen convert --from diffusers DiT-XL-2-256 --out models/dit-xl-2", ()),
        (
            'sdtgen sample --ckpt models/dit-xl-2 --vae DiT-XL-2-256/vae --class "golden retriever" --num 8 --sampler ddpm '
            "--steps 250 --guidance-scale 4 --guidance-channels 3",
            (),
        ),
        ("sdtgen export --ckpt models/dit-xl-2 --vae DiT-XL-2-256/vae --out pipelines/dit-xl-2", ()),
        ("sdtgen convert --from diffusers DiT-XL-2-256 --out models/sdt-xl-2 --attention sdt", ()),
        (
            "accelerate launch --multi_gpu --num_processes 8 scripts/train_gen.py --config configs/imagenet256_sdt_xl2.yaml "
            "model.pretrained=models/sdt-xl-2 output_dir=runs/sdt-xl-2-finetune train.max_steps=50000",
            (EIGHT_GPUS, ("train.max_steps=50000", f"{IMAGENET_64} {SHORT_RUN}")),
        ),
    ),
    # FOLDER: daisy/, rose/, tulip/ with two small images each.
    "training_on_your_data.md": (
        (
            "accelerate launch scripts/train_gen.py data.dataset=FOLDER data.image_size=256 data.vae=stabilityai/sd-vae-ft-ema "
            "data.latent_cache=cache/flowers256-sd-vae-ft-ema model.preset=S/2 objective=ddpm output_dir=runs/flowers-sdt-s2 "
            "train.max_steps=100000 train.global_batch_size=256 train.lr=1e-4 train.ema_decay=0.9999 train.ema_warmup=false "
            "train.warmup_steps=0 train.checkpoint_every=10000 train.log_every=100 sample.sampler=ddpm sample.steps=250 "
            "sample.guidance_scale=1.5 sample.per_class=4",
            (
                ("model.preset=S/2", "model.preset=S/2" + TINY_MODEL),
                ("train.max_steps=100000", "train.max_steps=2"),
                ("train.global_batch_size=256", "train.global_batch_size=4"),
                ("train.checkpoint_every=10000", "train.checkpoint_every=2"),
                ("train.log_every=100", "train.log_every=1"),
                ("sample.steps=250", "sample.steps=2"),
                ("sample.per_class=4", "sample.per_class=1"),
            ),
        ),
        # The page's alternative to the run above, from a config file: into a folder of its own.
        (
            "accelerate launch scripts/train_gen.py --config configs/imagenet256_sdt_s2.yaml data.dataset=FOLDER "
            "data.latent_cache=cache/flowers256-sd-vae-ft-ema output_dir=runs/flowers-sdt-s2 sample.classes=null",
            (
                ("output_dir=runs/flowers-sdt-s2", "output_dir=runs/flowers-from-config"),
                ("sample.classes=null", f"sample.classes=null{TINY_MODEL} {SHORT_RUN}"),
            ),
        ),
        (
            "sdtgen eval --ckpt runs/flowers-sdt-s2 --num-samples 5000 --ref FOLDER "
            "--inception-weights weights-inception-2015-12-05-6726825d.pth --out eval/flowers-sdt-s2",
            (("--num-samples 5000", "--num-samples 8"),),
        ),
    ),
}

# Commands that differ from one that runs (here or in tests/test_readme.py) only as the
# replacements show: other names, paths and counts, or options that the other run covers.
SAME_AS: dict[str, tuple[tuple[str, str], ...]] = {
    # A report from another results file: tests/test_ablation.py reports the current study's.
    "python scripts/ablation.py --report-only --publish docs/ablation-rope": (
        ("--report-only --publish docs/ablation-rope", "--study dit2023 --report-only --publish docs/ablation"),
    ),
    "python scripts/ablation.py --study dit2023 --out runs/ablation-full --report-only --publish docs/ablation-full": (
        ("--out runs/ablation-full ", ""),
        ("docs/ablation-full", "docs/ablation"),
    ),
    "python scripts/ablation.py --report-only --out docs/ablation": (
        ("--report-only --out docs/ablation", "--study dit2023 --report-only --publish docs/ablation"),
    ),
    "python benchmarks/bench_train_step.py train.global_batch_size=64": ((" train.global_batch_size=64", ""),),
    "python benchmarks/bench_model.py --repeats 5 --markdown": (
        ("--repeats 5", "--preset T/2 --input-size 16 --batch 128 --repeats 7"),
    ),
    "sdtgen convert --from dit DiT-XL-2-256x256.pt --out models/dit-xl-2": (("models/dit-xl-2", "dit-xl2"),),
    "sdtgen convert --from diffusers DiT-XL-2-256 --out models/dit-xl-2-hf": (
        ("DiT-XL-2-256 --out models/dit-xl-2-hf", "./DiT-XL-2-256 --out dit-xl2"),
    ),
    "sdtgen convert --from dit DiT-XL-2-256x256.pt --attention sdt --out models/sdt-xl-2-warm": (
        ("models/sdt-xl-2-warm", "sdt-xl2"),
    ),
    "sdtgen convert --from dit DiT-XL-2-256x256.pt --attention sdt --out models/sdt-xl-2": (
        ("models/sdt-xl-2", "sdt-xl2"),
    ),
    "sdtgen sample --class dog --class cat --num 8": (
        ("--class dog --class cat", "--class giraffe --class zebra --class elephant"),
    ),
    "sdtgen extract-latents --data FOLDER --image-size 256 --vae stabilityai/sd-vae-ft-ema --out cache/flowers256-sd-vae-ft-ema": (
        ("FOLDER", "/data/imagenet/train"),
        ("flowers256", "imagenet256"),
    ),
    # --ckpt of a run folder: as the default runs/animals-sdt.
    "sdtgen sample --ckpt runs/flowers-sdt-s2 --list-classes": (("--ckpt runs/flowers-sdt-s2 ", ""),),
    "sdtgen sample --ckpt runs/flowers-sdt-s2 --class rose --class tulip --num 8 --out samples/flowers": (
        ("--ckpt runs/flowers-sdt-s2 ", ""),
        ("rose", "giraffe"),
        ("tulip", "zebra"),
        ("samples/flowers", "samples/"),
    ),
    "sdtgen export --ckpt runs/flowers-sdt-s2 --out flowers-pipeline": (
        ("flowers-sdt-s2", "animals-sdt"),
        ("flowers-", "animals-"),
    ),
    # RUN, a run folder: the README's ImageNet run, there on two processes; --sampler as in sampling.md.
    "accelerate launch -m sdtgen.cli eval --ckpt RUN --num-samples 50000 --labels uniform --sampler ddpm --steps 250 "
    "--guidance-scale 1.5 --ref VIRTUAL_imagenet256_labeled.npz --inception-weights weights-inception-2015-12-05-6726825d.pth "
    "--out eval/xl2": (
        ("launch -m", "launch -q --multi_gpu --num_processes 8 -m"),
        ("RUN", "runs/imagenet256_sdt_xl2"),
        ("--sampler ddpm ", ""),
        ("eval/xl2", "eval/imagenet256_sdt_xl2"),
    ),
    "sdtgen sample --ckpt runs/sdt-xl-2-finetune --class 207 --num 8": (
        ("sdt-xl-2-finetune", "imagenet256_sdt_xl2"),
        ("--num 8", "--guidance-scale 4.0 --sampler dpm++ --steps 25 --seed 1 --out samples/"),
    ),
    # data.dataset and data.latent_cache: as in the flowers runs above.
    "accelerate launch --multi_gpu --num_processes 8 scripts/train_gen.py --config configs/imagenet256_sdt_xl2.yaml "
    "model.pretrained=models/sdt-xl-2 data.dataset=FOLDER data.latent_cache=cache/mydata256-sd-vae-ft-ema "
    "output_dir=runs/mydata-sdt-xl-2-finetune train.max_steps=50000": (
        (
            "data.dataset=FOLDER data.latent_cache=cache/mydata256-sd-vae-ft-ema output_dir=runs/mydata-",
            "output_dir=runs/",
        ),
    ),
}

# The measurement docs/sampling.md reports: minutes a point on the recipe's run; the planned 20-sample run covers the code.
CURVE_ON_THE_BUILT_IN_MODEL = "the sampler curve of the built-in model (RUN: the recipe sweep's run), minutes a point"
HOURS_OF_CPU = "hours of CPU; the lead runs them"  # the current ablation study (tests/test_ablation.py runs it shrunk)
NOT_RUN = {
    "python benchmarks/bench_model.py --table --math --repeats 5 --markdown": "times four tables of every variant "
    "and backend, minutes here; the planned bench_model run covers the timing code and test_model the auto column",
    "python benchmarks/bench_model.py --preset S/2 --input-size 32 --batch 8 --dtype bf16 --variants vanilla sdt --math "
    "--repeats 5 --markdown": "S/2 training steps, minutes here; the planned bench_model run covers the code",
    "python benchmarks/bench_model.py --table --math --variants sdt --repeats 5 --markdown": "four tables of training "
    "steps, S/2 among them, minutes here; the planned bench_model run covers the code",
    "sdtgen eval --ckpt runs/ladder-curves/+batch16-2400-s0 --guidance-scale 3 --guidance-interval 0 0.8": "needs the ladder's run of the "
    "main job's length (about 15 minutes here); evaluation.md's planned evals cover the command and test_sampling "
    "the interval",
    "python scripts/sampler_curve.py --ckpt RUN --num-samples 500 --part nfe --samplers dpm++ --nfe 4 8 12 25": CURVE_ON_THE_BUILT_IN_MODEL,
    "python scripts/sampler_curve.py --ckpt RUN --num-samples 500 --part guidance --guidance-sampler dpm++ --guidance-steps 12 --guidance-scales 1 1.5 2 3 4": CURVE_ON_THE_BUILT_IN_MODEL,
    "python scripts/sampler_curve.py --ckpt RUN --num-samples 500 --part nfe --samplers euler heun --nfe 8 25": CURVE_ON_THE_BUILT_IN_MODEL,
    "python scripts/sampler_curve.py --ckpt RUN --num-samples 500 --part nfe --samplers heun --nfe 49": CURVE_ON_THE_BUILT_IN_MODEL,
    "python scripts/sampler_curve.py --ckpt RUN --num-samples 500 --nfe 4 7 8 12 25 49 --guidance-sampler dpm++ --guidance-steps 12 --guidance-scales 1 1.5 2 3 4 --report-only": CURVE_ON_THE_BUILT_IN_MODEL,
    "python scripts/sweep_recipe.py --rows +batch32 +batch16 --steps 2400 --seeds 0 --eval-every 600 --out runs/ladder-curves "
    "--results docs/recipe_curves.json --plot base +batch32 +batch16": "two runs of the main job's length with four "
    "evaluations each, about 35 minutes on a bf16 CPU; the planned ladder run covers the code but --plot, which "
    "test_recipe_page runs",
    "accelerate launch -q scripts/train_gen.py seed=4 train.eval_every=2400 output_dir=runs/lr3e-3-seed4": "a training "
    "run of the main job's length, about 23 minutes here; test_readme runs the main job's command and test_training "
    "the evaluation during training",
    "sdtgen eval --ckpt runs/lr3e-3-seed4 --seed 4 --guidance-scale 3": "needs that run; evaluation.md's planned evals "
    "cover the command",
    "accelerate launch -q scripts/train_gen.py flow.direction_weight=0 seed=0 train.eval_every=2400 "
    "output_dir=runs/nodir-seed0": "a training run of the main job's length, 15 to 18 minutes here; test_readme runs the "
    "main job's command, test_recipe the direction loss and test_training the evaluation during training",
    "python scripts/ablation.py --study dit2023 --grids 256 --cost-only": "times five T/1 models' training steps, "
    "about 2 minutes here; "
    "the planned run times the T/2 steps with the same code",
    "python scripts/ablation.py --study dit2023 --grids 256": "the 256-token study, about 7.5 hours here (docs/ablation.md)",
    "python scripts/ablation.py --study dit2023 --grids 64 256 --steps 1200 --eval-every 200 --eval-samples 1000 "
    "--out runs/ablation-full": "the full study, days on 2 cores (docs/ablation.md); the planned run covers its code",
    "python scripts/ablation.py --study dit2023 --steps 1200 --eval-every 200 --eval-samples 1000 --out runs/ablation-full --variants "
    "fixed sdt --seeds 0 1": "four full-length runs, ~25 minutes each here, then their eval spread and content; the "
    "planned run covers its code",
    "python scripts/ablation.py --variants vanilla fixed sdt": HOURS_OF_CPU,
    "python scripts/ablation.py --variants sdt-norope vanilla-norope learned-fixed sdt-decomposed": HOURS_OF_CPU,
    "python scripts/ablation.py --grids 256 --variants vanilla fixed sdt --seeds 0 1 2 3 4 --steps 4800 "
    "--eval-every 1200": HOURS_OF_CPU,
    "python scripts/train_vae.py --out sdtgen/assets/vae": "rebuilds the shipped VAE; 20 s even at 2 steps, as it encodes "
    "all 10,000 images for the scaling factor and the test PSNR",
    "hf download facebook/DiT-XL-2-256 --local-dir DiT-XL-2-256": "needs the network; the test lays out that folder itself",
    "git worktree add /tmp/base 7472b91": "would add a worktree to this repository (bench_startup.py's --old checkout)",
    "python3 benchmarks/gpu_sampling.py OUT": "compares CUDA against the CPU: needs a GPU (docs/device-logs holds its runs)",
    "sdtgen export --ckpt RUN --out DIR [--sampler S] [--vae SPEC]": "a usage pattern (RUN, DIR, [options])",
    "sdtgen sample --ckpt DIR": "a usage pattern (DIR)",
    "sdtgen extract-latents --verify --out DIR": "a usage pattern (DIR)",
    "sdtgen <command> --help": "a usage pattern (<command>)",
    "sdtgen convert --attention sdt": "names an option of the convert commands run above",
    "python -m sdtgen.cli": "names the module entry point, which the `accelerate launch -m sdtgen.cli` commands run",
    "sdtgen convert --input-size N": "a usage pattern (N)",
}


def page_commands() -> dict[str, list[str]]:
    return {page.name: markdown_commands(page.read_text(), python_blocks=False) for page in sorted(DOCS.glob("*.md"))}


def run_page(page: str, cwd, env, **values) -> dict[str, str]:
    """Run the page's planned commands in order; their standard output by page text."""
    return {
        command: run(shell_command(command, replacements, **values), cwd, env).stdout
        for command, replacements in PAGES[page]
    }


# ------------------------------------------------------------------ the plans cover the pages


def test_every_docs_command_has_exactly_one_plan():
    in_readme = set(markdown_commands(README.read_text()))
    problems = []
    for page, commands in page_commands().items():
        planned = [command for command, _ in PAGES.get(page, ())]
        if len(planned) != len(set(planned)):
            problems.append(f"{page}: a command is planned twice")
        for command in commands:
            plans = (command in planned) + (command in SAME_AS) + (command in NOT_RUN) + (command in in_readme)
            if plans != 1:
                problems.append(f"{page}: {command}  ({'no plan' if plans == 0 else 'more than one plan'})")
        problems += [f"{page}: planned, but the page no longer has: {c}" for c in planned if c not in commands]
    everywhere = {command for commands in page_commands().values() for command in commands}
    problems += [
        f"{kind} names a command no page has: {c}"
        for kind, plan in (("SAME_AS", SAME_AS), ("NOT_RUN", NOT_RUN))
        for c in plan
        if c not in everywhere
    ]
    problems += [f"PAGES names a page that does not exist: {page}" for page in PAGES if page not in page_commands()]
    assert not problems, "docs/*.md commands without exactly one plan in tests/test_docs.py:\n" + "\n".join(problems)


def test_stand_ins_match_their_commands():
    for page, plan in PAGES.items():
        for command, replacements in plan:
            for old, _ in replacements:
                assert old in command, f"{page}: the stand-in for {old!r} does not match {command!r}"


def test_same_as_commands_name_commands_that_run():
    run_here = {command for plan in PAGES.values() for command, _ in plan}
    in_readme = set(markdown_commands(README.read_text()))  # tests/test_readme.py runs each
    for command, replacements in SAME_AS.items():
        target = command
        for old, new in replacements:
            assert old in target, f"the replacement of {old!r} does not match {command!r}"
            target = target.replace(old, new)
        assert target in run_here | in_readme, f"{command!r} is said to be the same as {target!r}, which nothing runs"


# ------------------------------------------------------------------ the pages


@pytest.fixture
def scratch(tmp_path, tmp_path_factory):
    """(a scratch folder to run in, its environment); reference features are shared between the pages."""
    cwd = tmp_path / "work"
    (cwd / "runs").mkdir(parents=True)
    env = scratch_env(tmp_path)
    env["SDTGEN_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "sdtgen-cache")
    return cwd, env


def imagenet_run(root):
    """A tiny 1000-class run on 4x32x32 latents of the stand-in SD VAE (in the scratch hub cache)."""
    model = random_model("ddpm", in_channels=4, input_size=32, num_classes=1000)
    return write_run(root, model, vae="stabilityai/sd-vae-ft-ema", class_names=IMAGENET_CLASSES)


@pytest.mark.slow
def test_benchmarks_page(scratch, tmp_path):
    cwd, env = scratch
    link_repo_folders(cwd, "benchmarks", "scripts")
    outputs = list(run_page("benchmarks.md", cwd, env, tmp=tmp_path).values())
    for output in outputs[:2]:
        assert re.search(r"^\| sdt \|.*\|$", output, flags=re.M), output[-2000:]  # a markdown table with sdt rows
    assert re.search(r"^\|.*1,?000.*\|$", outputs[2], flags=re.M), outputs[2][-2000:]  # a row for the 1,000 files
    assert re.search(r"^\| whole step \| [\d.]+ \| 100\.0% \|$", outputs[3], flags=re.M), outputs[3][-2000:]


@pytest.mark.slow
def test_evaluation_page(scratch, tmp_path):
    cwd, env = scratch
    (cwd / "runs" / "animals-sdt").symlink_to(built_in_run(tmp_path), target_is_directory=True)
    run_page("evaluation.md", cwd, env)
    built_in = json.loads((cwd / "eval" / "animals-sdt" / "metrics.json").read_text())
    assert built_in["provenance"]["num_samples"] == 20 and np.isfinite(built_in["fid"])
    assert json.loads((cwd / "eval" / "metrics.json").read_text())["fid"] == pytest.approx(built_in["fid"])


@pytest.mark.slow
def test_latents_page(scratch, tmp_path):
    cwd, env = scratch
    link_repo_folders(cwd, "cache/animals-latents")
    env["HOME"] = str(tmp_path / "home")
    stand_in_imagenet(tmp_path / "home" / "imagenet" / "train", num_classes=10)
    tiny_sd_vae().save_pretrained(tmp_path / "home" / "sd-vae-ft-ema")
    cache_hub_vae(tmp_path / "hf", "stabilityai/sd-vae-ft-ema")
    outputs = run_page("latents.md", cwd, env)
    assert "Verified the latent cache" in outputs["sdtgen extract-latents --verify --out cache/imagenet256-latents"]
    assert json.loads((cwd / "cache" / "animals-latents" / "manifest.json").read_text())["complete"]
    manifest = json.loads((cwd / "cache" / "imagenet256-latents" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_samples"] == 10 and manifest["latent_shape"] == [4, 32, 32]


@pytest.mark.slow
def test_ablation_page(scratch):
    cwd, env = scratch
    link_repo_folders(cwd, "scripts")
    outputs = run_page("ablation.md", cwd, env)
    results = json.loads((cwd / "runs" / "ablation" / "results.json").read_text())
    assert {(r["variant"], r["seed"]) for r in results["runs"]} == {
        (v, s) for v in ("vanilla", "fixed", "sdt") for s in (0, 1)
    }
    assert all([p["step"] for p in r["curve"]] == [1, 2] for r in results["runs"])
    grid = results["grids"]["64"]
    assert grid["paired"]["fid"]["fixed"]["sdt"]["n"] == 2 and "fixed" not in grid["paired"]["fid"]["fixed"]
    spread = grid["eval_spread"]["runs"]["sdt-seed0"]
    assert [r["sampling_seed"] for r in spread] == [0, 1]
    # sampling seed 0 is the run's own evaluation seed: the same score as training's last evaluation
    sdt0 = next(r for r in results["runs"] if (r["variant"], r["seed"]) == ("sdt", 0))
    assert spread[0]["fid"] == pytest.approx(sdt0["fid"], abs=1e-3)
    assert set(grid["content"]) == {"sdt-seed0", "sdt-seed1"}
    assert set(results["cost"]["64"]["x_vanilla"]) == {"vanilla", "fixed", "learned-fixed", "sdt", "sdt-decomposed"}
    published = cwd / "docs" / "ablation"
    assert {p.name for p in published.iterdir()} == {
        "results.json",
        "results.md",
        "curves.png",
        "paired.png",
        "content.png",
    }
    report = outputs["python scripts/ablation.py --study dit2023 --report-only --publish docs/ablation"]
    assert "Paired differences" in report
    assert "| sdt - fixed | FID |" in report  # the gaps at each evaluated step (steps 1 and 2)
    assert "## 256 tokens" not in report  # asked for, but none of its runs exists: no empty section


@pytest.mark.slow
def test_recipe_page(scratch):
    cwd, env = scratch
    link_repo_folders(cwd, "scripts", "docs")
    ladder, table = run_page("recipe.md", cwd, env).values()
    results = json.loads((cwd / "runs" / "ladder-test.json").read_text())
    assert set(results) == {"base-2-s0", "+swiglu-2-s0"}
    assert all(0 <= r["class_accuracy"] <= 1 and r["train_flops_per_image"] > 0 for r in results.values())
    assert "| +swiglu | 1 |" in ladder
    assert table.strip() in (cwd / "docs" / "recipe.md").read_text()  # the page shows the committed results
    plot = run(
        f"python scripts/sweep_recipe.py --table --results {cwd / 'runs' / 'ladder-test.json'} --plot base", cwd, env
    )
    assert plot.returncode == 0 and (cwd / "runs" / "ladder-test.png").is_file()


@pytest.mark.slow
def test_sampling_page(scratch, tmp_path):
    cwd, env = scratch
    link_repo_folders(cwd, "scripts", "configs")
    cache_hub_vae(tmp_path / "hf", "stabilityai/sd-vae-ft-ema")
    imagenet_run(cwd / "runs" / "imagenet256_sdt_xl2")
    dit_hub_folder(cwd / "DiT-XL-2-256")
    (cwd / "runs" / "animals-sdt").symlink_to(built_in_run(tmp_path), target_is_directory=True)
    run_page("sampling.md", cwd, env, imagenet=stand_in_imagenet(tmp_path / "imagenet"))
    curve = json.loads((cwd / "docs" / "sampler_curve" / "sampler_curve.json").read_text())["points"]
    assert {p["steps"] for p in curve} == {1} and all(p["num_samples"] == 20 and np.isfinite(p["fid"]) for p in curve)
    assert (cwd / "docs" / "sampler_curve" / "guidance_curve.png").is_file()
    assert len(list((cwd / "samples" / "xl2").glob("360-otter-*.png"))) == 4
    assert len(list((cwd / "samples").glob("207-golden_retriever-*.png"))) == 8
    assert (cwd / "pipelines" / "dit-xl-2" / "model_index.json").is_file()
    state = json.loads(
        (cwd / "runs" / "sdt-xl-2-finetune" / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text()
    )
    assert state["num_processes"] == 2 and state["config"]["model"]["pretrained"] == "models/sdt-xl-2"


@pytest.mark.slow
def test_training_on_your_data_page(scratch, tmp_path):
    cwd, env = scratch
    link_repo_folders(cwd, "scripts", "configs")
    image_folder(cwd / "FOLDER", ["daisy", "rose", "tulip"], per_class=2)
    cache_hub_vae(tmp_path / "hf", "stabilityai/sd-vae-ft-ema")
    stand_in_inception_weights(cwd / "weights-inception-2015-12-05-6726825d.pth")
    run_page("training_on_your_data.md", cwd, env)
    for run_dir in ("flowers-sdt-s2", "flowers-from-config"):
        assert json.loads((cwd / "runs" / run_dir / "class_names.json").read_text()) == ["daisy", "rose", "tulip"]
        assert (cwd / "runs" / run_dir / "checkpoints" / "checkpoint-2" / "model").is_dir()
    assert json.loads((cwd / "eval" / "flowers-sdt-s2" / "metrics.json").read_text())["provenance"]["num_samples"] == 8


# The pages describe the code as it is: the paths they name exist, their lists are the code's.

PAGES_AND_README = (*sorted(DOCS.glob("*.md")), README)
PACKAGE = REPO / "sdtgen"
# A repository path in a page: a top-level folder, then names; `*` and `{a,b}` read as a shell does.
REPO_PATH = re.compile(
    r"(?<![\w./-])(?:sdtgen|scripts|configs|docs|benchmarks|tests|notebooks)/(?:[\w.*/-]|\{[\w.,-]+\})*[\w*}]"
)
# Two or more `code` spans joined by nothing but a comma, "or", "and" or "|": a list of names.
CODE_LIST = re.compile(r"`[^`\n]+`(?:(?:,? (?:or|and) |, | \| )`[^`\n]+`)+")


def expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    return [
        p for option in match[1].split(",") for p in expand_braces(path[: match.start()] + option + path[match.end() :])
    ]


def named_path_exists(path: str) -> bool:
    return all(any(REPO.glob(p)) if "*" in p else (REPO / p).exists() for p in expand_braces(path))


def test_every_path_a_page_names_exists():
    missing = []
    for page in PAGES_AND_README:
        text = page.read_text()
        missing += [f"{page.name}: {path}" for path in REPO_PATH.findall(text) if not named_path_exists(path)]
        # A page named without its folder (`README.md`, `method.md`): at the top, in docs/ or a folder of it.
        for name in re.findall(r"`([\w.-]+\.md)`", text):
            if not any((folder / name).exists() for folder in (REPO, DOCS, *filter(Path.is_dir, DOCS.iterdir()))):
                missing.append(f"{page.name}: {name}")
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            target = link.split("#")[0]
            if target and "://" not in target and not (page.parent / target).exists():
                missing.append(f"{page.name}: link {link}")
    assert not missing, "pages name paths the repository does not have:\n" + "\n".join(missing)


def test_architecture_page_has_a_row_for_every_module():
    named = set(re.findall(r"`([\w/]+\.py)`", (DOCS / "architecture.md").read_text()))
    unknown = {path for path in named if not (REPO / path).exists() and not (PACKAGE / path).exists()}
    assert not unknown, f"docs/architecture.md names files that are neither in the repository nor in sdtgen/: {unknown}"
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert not modules - named, f"docs/architecture.md has no row for {sorted(modules - named)}"


def test_pages_list_the_codes_backends_and_presets():
    from sdtgen.models.backends import BACKENDS
    from sdtgen.models.dit import MODEL_SIZES, PATCH_SIZES

    patches = {f"/{patch}" for patch in PATCH_SIZES}
    # A list of three or more names drawn from one of these is complete; backends may leave out `auto`,
    # which picks one of the others.
    complete = {
        "backends": (set(BACKENDS), (set(BACKENDS), set(BACKENDS) - {"auto"})),
        "model sizes": (set(MODEL_SIZES), (set(MODEL_SIZES),)),
        "patch sizes": (patches, (patches,)),
    }
    seen, wrong = set(), []
    for page in PAGES_AND_README:
        for match in CODE_LIST.finditer(page.read_text()):
            names = set(re.findall(r"`([^`\n]+)`", match[0]))
            for kind, (vocabulary, allowed) in complete.items():
                if len(names) >= 3 and names <= vocabulary:
                    seen.add(kind)
                    if names not in allowed:
                        wrong.append(f"{page.name} lists the {kind} {match[0]}; the code has {sorted(vocabulary)}")
    assert not wrong, "\n".join(wrong)
    assert seen == set(complete), f"no page lists the {set(complete) - seen}"
