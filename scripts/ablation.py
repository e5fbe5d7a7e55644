"""Does SDT help generation? Every attention variant, paired over seeds, at two token grids.

    python scripts/ablation.py                       # what docs/ablation.md reports: 64 tokens, 5 variants x 5 seeds
    python scripts/ablation.py --grids 256           # the 256-token grid (patch 1 on the 16x16 latents), ~7.5 h here
    python scripts/ablation.py --grids 64 256 --steps 1200 --eval-every 200 --eval-samples 1000 \\
        --out runs/ablation-full                     # the full study (~50 h on 2 CPU cores; a GPU: not measured)
    python scripts/ablation.py --grids 64 256 --report-only --publish docs/ablation   # tables and plots

Each run trains the built-in recipe (T/2 for 64 tokens, T/1 for 256; flow matching; batch 64; AdamW 1e-3,
cosine decay over --steps) with only `model.attention` and `seed` changed. Within a seed, every variant sees
the same batches, flips, latent draws, timesteps and noise (functions of (seed, step)) and is evaluated on
the same sampling noise (the training-time evaluation samples from the run's seed), so the paired
difference variant - baseline removes the seed's shared part. Initial weights are identical among
vanilla, fixed and learned-fixed, and between sdt and sdt-decomposed; the two groups differ because the
gate draws random numbers at initialisation (that part is in the intervals, as seed noise).

Outputs in --out: results.json (every run's FID / class-accuracy curve, the paired statistics, the eval's
own spread, the content-dependence rows, costs), results.md (the tables) and three PNGs: FID-vs-step
curves, paired differences with 95 % intervals, and the object-vs-background decay contrast.
Re-running skips finished runs and measurements, so an interrupted study continues.
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
from ablation_stats import BASELINES, GRIDS, METRICS, content_summary, paired_differences
from results_file import read_results, write_results

from sdtgen.models.attention import ATTENTION_VARIANTS, CONTENT_GATED
from sdtgen.runs import CONFIG_FILE, LOG_FILE, find_source, read_log

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: benchmarks/ (the step timer)

PROTOCOL_KEYS = ("steps", "eval_every", "eval_samples", "eval_steps", "noise_levels")
OUTPUTS = ("results.json", *FILES)


def run_dir(args: argparse.Namespace, grid: str, variant: str, seed: int) -> Path:
    return Path(args.out) / f"tokens{grid}" / f"{variant}-seed{seed}"


def run_overrides(args: argparse.Namespace, grid: str, variant: str, seed: int) -> list[str]:
    """The config overrides of one run: the built-in recipe, shortened, with this variant and seed."""
    return [
        f"output_dir={run_dir(args, grid, variant, seed)}",
        f"model.preset={GRIDS[grid]}",
        f"model.attention={variant}",
        f"seed={seed}",
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        f"train.eval_samples={args.eval_samples}",
        f"train.eval_steps={args.eval_steps}",
        f"train.checkpoint_every={args.steps}",
        "train.keep_checkpoints=1",
        f"data.latent_cache={args.latent_cache}",
        "sample.per_class=4",
    ]


def finished(run: Path, steps: int) -> bool:
    """Whether the run's log holds its evaluation at its last step."""
    log = run / LOG_FILE
    return log.is_file() and any(r["step"] == steps and "eval_fid" in r for r in read_log(log))


def train_run(args: argparse.Namespace, grid: str, variant: str, seed: int) -> None:
    from sdtgen.config import load_config
    from sdtgen.training.trainer import train

    run = run_dir(args, grid, variant, seed)
    if run.exists():  # an interrupted run starts over: its partial log would mix two runs' curves
        shutil.rmtree(run)
    train(load_config(None, run_overrides(args, grid, variant, seed)))


def summarize_run(run: Path, grid: str, variant: str, seed: int) -> dict:
    """A run's evaluation curve and final scores, from its log.jsonl."""
    log = read_log(run / LOG_FILE)
    evals = [r for r in log if "eval_fid" in r]
    return {
        "grid": grid,
        "variant": variant,
        "seed": seed,
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


def eval_spread(run: Path, sampling_seeds: list[int], args: argparse.Namespace) -> list[dict]:
    """The same model scored as in training, once per sampling seed: the evaluation's own noise."""
    from sdtgen.evaluation.evaluate import score_model

    model, vae, config = load_trained(run)
    rows = []
    for seed in sampling_seeds:
        result = score_model(
            model,
            vae,
            objective=config.objective,
            num_samples=args.eval_samples,
            seed=seed,
            sampler=config.sample.sampler,
            steps=args.eval_steps,
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


def step_costs(grid: str, batch: int = 64, repeats: int = 7) -> dict:
    """Each variant's training step (forward + backward, the backend `auto` picks, the precision training's
    `auto` picks) timed round-robin in this process, so machine load hits all alike: median ms and x vanilla."""
    import torch

    from benchmarks.bench_model import time_training_steps
    from sdtgen import SDTDiT
    from sdtgen.training.precision import resolve_mixed_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_mixed_precision("auto", device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    generator = torch.Generator().manual_seed(0)
    x, target = (torch.randn(batch, 1, 16, 16, generator=generator).to(device) for _ in range(2))
    t = torch.rand(batch, generator=generator).to(device) * 1000
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    models = {
        v: SDTDiT.from_preset(GRIDS[grid], attention=v, input_size=16, in_channels=1, num_classes=10, learn_sigma=False)
        .to(device)
        .train()
        for v in ATTENTION_VARIANTS
    }
    times = time_training_steps(models, (x, t, y, target), dtype, device, repeats)
    vanilla = statistics.median(times["vanilla"])
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "precision": precision,
        "batch": batch,
        "step_ms": {v: 1000 * statistics.median(ts) for v, ts in times.items()},
        "x_vanilla": {v: statistics.median(ts) / vanilla for v, ts in times.items()},
    }


def study_grid(args: argparse.Namespace, grid: str, previous: dict, results: dict) -> None:
    """Train what is missing at one grid, then its paired statistics, the eval's spread and the content rows."""
    for seed in args.seeds:  # seed-major: an interrupted study has whole seeds
        for variant in args.variants:
            run = run_dir(args, grid, variant, seed)
            if not finished(run, args.steps) and not args.report_only:
                train_run(args, grid, variant, seed)
            if finished(run, args.steps):
                results["runs"].append(summarize_run(run, grid, variant, seed))
    protocol = {"preset": GRIDS[grid], "batch": 64, **{k: getattr(args, k) for k in PROTOCOL_KEYS}}
    g = previous.get("grids", {}).get(grid, {})
    if g.get("protocol") != protocol:  # measurements of runs trained otherwise do not carry over
        g = {"protocol": protocol}
    results["grids"][grid] = g
    g["paired"] = {m: {b: paired_differences(results["runs"], grid, m, b) for b in BASELINES} for m in METRICS}
    # The same along the curves: whether a gap holds, opens or closes with training.
    steps = sorted({p["step"] for r in results["runs"] if r["grid"] == grid for p in r["curve"]})
    g["paired_by_step"] = {
        str(step): {m: {b: paired_differences(results["runs"], grid, m, b, step) for b in BASELINES} for m in METRICS}
        for step in steps
    }
    pair = [run_dir(args, grid, v, args.seeds[0]) for v in ("fixed", "sdt")]
    spread = g.setdefault("eval_spread", {"runs": {}})
    if not args.report_only and all(finished(r, args.steps) for r in pair):
        for run in pair:
            if run.name not in spread["runs"]:
                spread["runs"][run.name] = eval_spread(run, list(range(args.spread_seeds)), args)
        fixed_rows, sdt_rows = (spread["runs"][r.name] for r in pair)
        spread["paired_sdt_minus_fixed"] = {
            m: [s[m] - f[m] for s, f in zip(sdt_rows, fixed_rows, strict=True)] for m in METRICS
        }
    content = g.setdefault("content", {})
    for variant in CONTENT_GATED:
        for seed in args.seeds:
            run = run_dir(args, grid, variant, seed)
            if run.name not in content and finished(run, args.steps) and not args.report_only:
                content[run.name] = content_rows(run, args)
    g["content_summary"] = content_summary(content)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=["64"], choices=list(GRIDS), help="token grids (default: 64)")
    parser.add_argument("--variants", nargs="+", default=list(ATTENTION_VARIANTS), choices=ATTENTION_VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="training seeds (default: 0-4)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run, batch 64 (default: 200)")
    parser.add_argument(
        "--eval-every", type=int, default=100, help="steps between evaluations: the curves (default: 100)"
    )
    parser.add_argument(
        "--eval-samples", type=int, default=500, help="class-balanced samples per evaluation (default: 500)"
    )
    parser.add_argument("--eval-steps", type=int, default=8, help="DPM++ steps of the evaluation samples (default: 8)")
    parser.add_argument(
        "--spread-seeds", type=int, default=5, help="sampling seeds for the eval's own spread (default: 5)"
    )
    parser.add_argument("--noise-levels", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--latent-cache", default="cache/animals-latents")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--report-only", action="store_true", help="train nothing: tables and plots from finished runs")
    parser.add_argument("--cost-only", action="store_true", help="only time each variant's training step at --grids")
    parser.add_argument("--cost-repeats", type=int, default=7, help="timed rounds of the step costs (default: 7)")
    parser.add_argument("--publish", metavar="DIR", help="also copy the results and plots to DIR (docs/ablation)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    previous = read_results(results_path, {})
    # Grids not asked for this time keep what an earlier invocation measured.
    results = {
        "runs": [r for r in previous.get("runs", []) if r["grid"] not in args.grids],
        "grids": {k: v for k, v in previous.get("grids", {}).items() if k not in args.grids},
        "cost": previous.get("cost", {}),
    }
    for grid in args.grids:
        if args.cost_only or (grid not in results["cost"] and not args.report_only):
            results["cost"][grid] = step_costs(grid, repeats=args.cost_repeats)
        if not args.cost_only:
            study_grid(args, grid, previous, results)
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
