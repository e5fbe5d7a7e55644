"""Does SDT help generation? Attention variants, paired over seeds, at two token grids.

    python scripts/ablation.py --seeds 0 1 2 3 4       # the current recipe at 64 tokens: 7 variants, the main job's length
    python scripts/ablation.py --grids 256 --variants vanilla fixed sdt --steps 4800 --eval-every 1200   # at 256 tokens
    python scripts/ablation.py --report-only --publish docs/ablation-rope   # tables and plots from results.json alone
    python scripts/ablation.py --study dit2023          # the 2023 baseline of docs/ablation.md: the old recipe, 200 steps

A study (STUDIES in ablation_stats.py) is a recipe, its variants and the paired comparisons it reports. `rope` (the
default) trains the default config (docs/recipe.md: SwiGLU, RMSNorm, RoPE, ...) to the main job's length, every
attention variant with RoPE and sdt and vanilla also without it; `rope-lr2e-3` the same on the defaults before the
learning rate and guidance moved (lr 2e-3, guidance 3; its five seeds are docs/ablation.md's answer until `rope` has
its own); `dit2023` the recipe before the ladder (no RoPE, batch 64) for 200 steps. A run is the study's recipe with
only its variant's overrides, `seed` and the preset of its grid changed (T/2 for 64 tokens, T/1 for 256). Within a
seed, every variant sees the same batches, flips, latent draws, timesteps and noise (functions of (seed, step)) and
is evaluated on the same sampling noise (the training-time evaluation samples from the run's seed), so the paired
difference variant - baseline removes the seed's shared part. Initial weights are identical among vanilla, fixed and
learned-fixed (with RoPE or not), and among the sdt variants; the two groups differ because the gate draws random
numbers at initialisation (that part is in the intervals, as seed noise).

Outputs in --out: results.json (the study, every run's overrides and FID / class-accuracy curve, the paired
statistics, the eval's own spread, the content-dependence rows, costs), results.md (the tables) and three PNGs:
FID-vs-step curves, paired differences with 95 % intervals, and the object-vs-background decay contrast.
Re-running continues the study: finished runs are skipped, a killed run resumes from its last checkpoint, the
measurements are kept, and a run folder trained with other settings is an error rather than overwritten. Every
finished run of a grid's folder counts, and every run results.json records with the config asked for now, folder
or not, so seed sets can run in separate sessions; where --out holds no results.json yet, the study continues from
its published copy (docs/ablation-rope/results.json).
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import sys
from pathlib import Path

from ablation_report import FILES, write_report
from ablation_stats import GRIDS, METRICS, STUDIES, Study, content_summary, study_of
from results_file import read_results, write_results

from sdtgen.runs import CONFIG_FILE, LOG_FILE, find_source, read_log

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ (the step timer)

PROTOCOL_KEYS = ("steps", "eval_every", "eval_samples", "eval_steps", "noise_levels")
OUTPUTS = ("results.json", *FILES)
DEFAULT_STUDY = "rope"


def run_dir(args: argparse.Namespace, grid: str, variant: str, seed: int) -> Path:
    return Path(args.out) / f"tokens{grid}" / f"{variant}-seed{seed}"


def run_settings(args: argparse.Namespace, study: Study, grid: str, variant: str, seed: int) -> list[str]:
    """What one run trains with, as overrides of the default config: the study's recipe, the grid's preset, the
    variant's own overrides, the seed, the length and the evaluation. Its entry in the results records them."""
    return [
        *study.recipe,
        f"model.preset={GRIDS[grid]}",
        *study.variants[variant],
        f"seed={seed}",
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        f"train.eval_samples={args.eval_samples}",
        f"train.eval_steps={'null' if args.eval_steps is None else args.eval_steps}",
        f"data.latent_cache={args.latent_cache}",
        "sample.per_class=4",
    ]


def run_overrides(args: argparse.Namespace, study: Study, grid: str, variant: str, seed: int) -> list[str]:
    """The run's settings, its folder, and resuming from its newest checkpoint (the only one kept)."""
    return [
        f"output_dir={run_dir(args, grid, variant, seed)}",
        *run_settings(args, study, grid, variant, seed),
        "train.keep_checkpoints=1",
        "train.resume=latest",
    ]


def flat(tree: dict, prefix: str = "") -> dict:
    """A nested config dict as {"section.key": value}."""
    out = {}
    for key, value in tree.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return out


def flat_config(path: Path | None, overrides: list[str] = ()) -> dict:
    """The config of a config.yaml (None: the defaults) and `overrides`, as JSON stores it: {"section.key": value}."""
    from sdtgen.config import config_to_dict, load_config

    return json.loads(json.dumps(flat(config_to_dict(load_config(path, list(overrides))))))


# Not settings of what a run trains: the precision `auto` resolved to, and the folder (a study's runs can move).
UNCOMPARED = ("train.mixed_precision", "output_dir")


def config_differences(saved: dict, overrides: list[str]) -> list[str]:
    """Where a run's flat config differs from the config of `overrides`, in the keys that say how it trained."""
    return [
        f"{key}: {saved.get(key)!r}, asked {value!r}"
        for key, value in flat_config(None, overrides).items()
        if key not in UNCOMPARED and saved.get(key) != value
    ]


def settings_differences(run: Path, overrides: list[str]) -> list[str]:
    """Where the run's config.yaml differs from the config of `overrides`."""
    return config_differences(flat_config(run / CONFIG_FILE), overrides)


def finished(run: Path, steps: int) -> bool:
    """Whether the run's log holds its evaluation at its last step."""
    log = run / LOG_FILE
    return log.is_file() and any(r["step"] == steps and "eval_fid" in r for r in read_log(log))


def done(args: argparse.Namespace, study: Study, grid: str, variant: str, seed: int) -> bool:
    """Whether the run finished, trained with the settings asked for now."""
    run = run_dir(args, grid, variant, seed)
    overrides = run_overrides(args, study, grid, variant, seed)
    return finished(run, args.steps) and not settings_differences(run, overrides)


def train_run(args: argparse.Namespace, study: Study, grid: str, variant: str, seed: int) -> None:
    """Train one run, resuming it from its checkpoint if it has one."""
    from sdtgen.config import load_config
    from sdtgen.runs import CHECKPOINTS_DIR
    from sdtgen.training.checkpoint import resolve_resume
    from sdtgen.training.trainer import train

    run = run_dir(args, grid, variant, seed)
    overrides = run_overrides(args, study, grid, variant, seed)
    if (run / CONFIG_FILE).is_file() and (differences := settings_differences(run, overrides)):
        raise ValueError(
            f"{run} was trained with other settings ({'; '.join(differences)}): give them again, use another --out, "
            "or delete it to train it anew."
        )
    if run.exists() and resolve_resume("latest", run / CHECKPOINTS_DIR) is None:
        shutil.rmtree(run)  # killed before its first checkpoint: its partial log would mix two runs' curves
    train(load_config(None, overrides))


def recorded_runs(args: argparse.Namespace, study: Study, grid: str, previous: dict) -> dict[tuple[str, int], dict]:
    """{(variant, seed): entry} of the runs `previous` results hold at the grid whose recorded config is the one
    asked for now (defaults included, so a changed default retrains): they count as finished without their folders
    (a fresh clone holds only the published results)."""
    return {
        (r["variant"], r["seed"]): r
        for r in previous.get("runs", [])
        if r["grid"] == grid
        and r["variant"] in study.variants
        and "config" in r
        and not config_differences(r["config"], run_overrides(args, study, grid, r["variant"], r["seed"]))
    }


def finished_runs(args: argparse.Namespace, study: Study, grid: str) -> list[tuple[str, int]]:
    """(variant, seed) of every run in the grid's folder that finished with the settings asked for, seed-major."""
    found = []
    for path in (Path(args.out) / f"tokens{grid}").glob("*-seed*"):
        variant, _, seed = path.name.rpartition("-seed")
        if variant in study.variants and seed.isdigit() and done(args, study, grid, variant, int(seed)):
            found.append((int(seed), list(study.variants).index(variant), variant))
    return [(variant, seed) for seed, _, variant in sorted(found)]


def summarize_run(run: Path, grid: str, variant: str, seed: int, overrides: list[str]) -> dict:
    """A run's settings (`overrides` of the default config, and the whole config it trained with), evaluation curve
    and final scores, from its config.yaml and log.jsonl."""
    log = read_log(run / LOG_FILE)
    evals = [r for r in log if "eval_fid" in r]
    return {
        "grid": grid,
        "variant": variant,
        "seed": seed,
        "overrides": overrides,
        "config": flat_config(run / CONFIG_FILE),
        "curve": [{"step": r["step"], "fid": r["eval_fid"], "class_accuracy": r["eval_class_accuracy"]} for r in evals],
        "fid": evals[-1]["eval_fid"],
        "class_accuracy": evals[-1]["eval_class_accuracy"],
    }


def load_trained(run: Path):
    """The EMA model of a run's newest checkpoint and the run's VAE."""
    from sdtgen.config import load_config
    from sdtgen.models.dit import SDTDiT
    from sdtgen.vae import load_vae

    config = load_config(run / CONFIG_FILE)
    model = SDTDiT.from_pretrained(find_source(run).model_dir)
    return model.eval(), load_vae(config.data.vae), config


def eval_spread(run: Path, sampling_seeds: list[int]) -> list[dict]:
    """The same model scored as in training, once per sampling seed: the evaluation's own noise."""
    from sdtgen.evaluation.evaluate import score_model

    model, vae, config = load_trained(run)
    rows = []
    for seed in sampling_seeds:
        result = score_model(
            model,
            vae,
            objective=config.objective,
            num_samples=config.train.eval_samples,
            seed=seed,
            sampler=config.sample.sampler,
            steps=config.train.eval_steps or config.sample.steps,
            guidance=config.sample.guidance(),
        )
        rows.append({"sampling_seed": seed, "fid": result["fid"], "class_accuracy": result["class_accuracy"]})
    return rows


@functools.lru_cache(maxsize=2)
def encoded_test_split(vae_spec: str):
    """The test split's silhouettes in [-1, 1], their posterior-mean latents and labels: encoded once per VAE,
    not once per run."""
    import torch

    from sdtgen.data.animals import load_animals
    from sdtgen.vae import load_vae

    vae = load_vae(vae_spec)
    images, labels = load_animals("test")
    images = images.float() / 127.5 - 1.0
    with torch.no_grad():
        mean, _ = vae.encode_moments(images)
    return vae.scale_latent(mean), images, labels


def content_rows(run: Path, args: argparse.Namespace) -> list[dict]:
    """Object / background log-decay statistics of a trained run on the test split's silhouettes."""
    from sdtgen.decay_content import content_dependence

    model, _, config = load_trained(run)
    latents, images, labels = encoded_test_split(config.data.vae)
    return content_dependence(model, latents, images, labels, args.noise_levels)


def step_costs(study: Study, grid: str, batch: int | None = None, repeats: int = 7) -> dict:
    """Each variant's training step (forward + backward of the model its runs train, the backend `auto` picks, the
    precision training's `auto` picks, the recipe's batch unless `batch`) timed round-robin in this process, so
    machine load hits all alike: median ms and x vanilla."""
    import torch

    from benchmarks.bench_model import time_training_steps
    from sdtgen.config import load_config
    from sdtgen.training.precision import resolve_mixed_precision
    from sdtgen.training.trainer import build_model

    configs = {
        v: load_config(None, [*study.recipe, f"model.preset={GRIDS[grid]}", *study.variants[v]]) for v in study.variants
    }
    batch = batch or configs["vanilla"].train.global_batch_size
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_mixed_precision("auto", device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    generator = torch.Generator().manual_seed(0)
    x, target = (torch.randn(batch, 1, 16, 16, generator=generator).to(device) for _ in range(2))
    t = torch.rand(batch, generator=generator).to(device) * 1000
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    models = {v: build_model(config, 10, (1, 16, 16)).to(device).train() for v, config in configs.items()}
    times = time_training_steps(models, (x, t, y, target), dtype, device, repeats)
    vanilla = statistics.median(times["vanilla"])
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "precision": precision,
        "batch": batch,
        "step_ms": {v: 1000 * statistics.median(ts) for v, ts in times.items()},
        "x_vanilla": {v: statistics.median(ts) / vanilla for v, ts in times.items()},
    }


def study_grid(args: argparse.Namespace, study: Study, grid: str, previous: dict, results: dict) -> None:
    """Train what is missing at one grid; then, over every finished run of its folder, the paired statistics,
    the eval's spread and the content rows."""
    from sdtgen.config import load_config

    recorded = recorded_runs(args, study, grid, previous)
    for seed in args.seeds:  # seed-major: an interrupted study has whole seeds
        for variant in args.variants:
            if (variant, seed) not in recorded and not done(args, study, grid, variant, seed):
                train_run(args, study, grid, variant, seed)
    entries = recorded | {
        (v, s): summarize_run(run_dir(args, grid, v, s), grid, v, s, run_settings(args, study, grid, v, s))
        for v, s in finished_runs(args, study, grid)
    }
    found = sorted(entries, key=lambda key: (key[1], list(study.variants).index(key[0])))  # seed-major
    results["runs"] += [entries[key] for key in found]
    batch = load_config(None, study.recipe).train.global_batch_size
    protocol = {"preset": GRIDS[grid], "batch": batch, **{k: getattr(args, k) for k in PROTOCOL_KEYS}}
    g = previous.get("grids", {}).get(grid, {})
    if g.get("protocol") != protocol:  # measurements of runs trained otherwise do not carry over
        g = {"protocol": protocol}
    results["grids"][grid] = g
    g["paired"] = {m: study.paired(results["runs"], grid, m) for m in METRICS}
    # The same along the curves: whether a gap holds, opens or closes with training.
    steps = sorted({p["step"] for r in results["runs"] if r["grid"] == grid for p in r["curve"]})
    g["paired_by_step"] = {
        str(step): {m: study.paired(results["runs"], grid, m, step) for m in METRICS} for step in steps
    }
    # The eval's own spread: fixed and sdt of the first seed where both finished, scored with other sampling seeds.
    spread = g.setdefault("eval_spread", {"runs": {}})
    pair_seeds = [s for v, s in found if v == "sdt" and ("fixed", s) in found]
    if pair_seeds:
        pair = [run_dir(args, grid, v, pair_seeds[0]) for v in ("fixed", "sdt")]
        for run in pair:
            if run.name not in spread["runs"]:
                spread["runs"][run.name] = eval_spread(run, list(range(args.spread_seeds)))
        fixed_rows, sdt_rows = (spread["runs"][r.name] for r in pair)
        spread["paired_sdt_minus_fixed"] = {
            m: [s[m] - f[m] for s, f in zip(sdt_rows, fixed_rows, strict=True)] for m in METRICS
        }
    content = g.setdefault("content", {})
    for variant in study.content_gated:
        for seed in (s for v, s in found if v == variant):
            run = run_dir(args, grid, variant, seed)
            if run.name not in content:
                if not run.is_dir():
                    print(f"{run.name}: its folder is gone, so the content statistic leaves it out", file=sys.stderr)
                    continue
                content[run.name] = content_rows(run, args)
    g["content_summary"] = content_summary(content)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--study",
        choices=list(STUDIES),
        help=f"what to train and compare (default: the one --out holds, else {DEFAULT_STUDY})",
    )
    parser.add_argument("--grids", nargs="+", default=["64"], choices=list(GRIDS), help="token grids (default: 64)")
    parser.add_argument("--variants", nargs="+", help="the study's variants to train (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="training seeds (default: 0-4)")
    # The protocol: each default is the study's (eval steps None: the run's sample.steps).
    for flag, meaning in (
        ("--steps", "training steps per run"),
        ("--eval-every", "steps between evaluations: the curves"),
        ("--eval-samples", "class-balanced samples per evaluation"),
        ("--eval-steps", "DPM++ steps of the evaluation samples"),
    ):
        key = flag[2:].replace("-", "_")
        defaults = ", ".join(f"{s.name} {getattr(s, key) or 'sample.steps'}" for s in STUDIES.values())
        parser.add_argument(flag, type=int, help=f"{meaning} (default: the study's: {defaults})")
    parser.add_argument(
        "--spread-seeds", type=int, default=5, help="sampling seeds for the eval's own spread (default: 5)"
    )
    parser.add_argument("--noise-levels", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--latent-cache", default="cache/animals-latents")
    parser.add_argument(
        "--out", help="the study's runs and results.json (default: the study's, e.g. runs/ablation-rope)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train and measure nothing: the tables and plots of --out's results.json",
    )
    parser.add_argument("--cost-only", action="store_true", help="only time each variant's training step at --grids")
    parser.add_argument("--cost-repeats", type=int, default=7, help="timed rounds of the step costs (default: 7)")
    parser.add_argument("--publish", metavar="DIR", help="also copy the results and plots to DIR (docs/ablation-rope)")
    args = parser.parse_args()
    asked = STUDIES[args.study or DEFAULT_STUDY]
    out = Path(args.out or asked.out)
    args.out = str(out)
    results_path = out / "results.json"
    previous = read_results(results_path, {})
    published = Path(asked.published) / "results.json"
    if not previous and out == Path(asked.out) and published.is_file():
        print(f"{results_path} does not exist: continuing from the published {published}", file=sys.stderr)
        previous = read_results(published, {})
    recorded = study_of(previous).name if previous else None
    study = STUDIES[args.study or recorded or DEFAULT_STUDY]
    if recorded and study.name != recorded:
        parser.error(f"{results_path} holds the {recorded} study; give --study {recorded}, or another --out")
    if args.report_only:
        if not previous:
            parser.error(f"--report-only reads {results_path}, which does not exist")
        results = previous
    else:
        args.variants = args.variants or list(study.variants)
        if unknown := [v for v in args.variants if v not in study.variants]:
            parser.error(f"--variants {' '.join(unknown)}: the {study.name} study has {', '.join(study.variants)}")
        for key in ("steps", "eval_every", "eval_samples", "eval_steps"):
            if getattr(args, key) is None:
                setattr(args, key, getattr(study, key))
        out.mkdir(parents=True, exist_ok=True)
        # Grids not asked for this time keep what an earlier invocation measured; --cost-only keeps every grid's.
        remeasured = set() if args.cost_only else set(args.grids)
        results = {
            "study": study.name,
            "runs": [r for r in previous.get("runs", []) if r["grid"] not in remeasured],
            "grids": {k: v for k, v in previous.get("grids", {}).items() if k not in remeasured},
            "cost": previous.get("cost", {}),
        }
        for grid in args.grids:
            if args.cost_only or grid not in results["cost"]:
                results["cost"][grid] = step_costs(study, grid, repeats=args.cost_repeats)
            if not args.cost_only:
                study_grid(args, study, grid, previous, results)
            write_results(results_path, json.dumps(results, indent=1))
    print(write_report(results, out))
    if args.publish:
        target = Path(args.publish)
        target.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            if (out / name).is_file():
                shutil.copy2(out / name, target / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
