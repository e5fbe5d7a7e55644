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

VARIANTS = ("vanilla", "fixed", "learned-fixed", "sdt", "sdt-decomposed")
GATED = ("sdt", "sdt-decomposed")
BASELINES = ("fixed", "vanilla")
METRICS = {"fid": "FID", "class_accuracy": "class accuracy"}
# token grid -> preset on the built-in 16 x 16 latents: patch 2 gives 8 x 8 tokens, patch 1 gives 16 x 16
GRIDS = {"64": "T/2", "256": "T/1"}
PROTOCOL_KEYS = ("steps", "eval_every", "eval_samples", "eval_steps", "noise_levels")
OUTPUTS = ("results.json", "results.md", "curves.png", "paired.png", "content.png")


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


def read_log(run: Path) -> list[dict]:
    path = run / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def finished(run: Path, steps: int) -> bool:
    return any(r["step"] == steps and "eval_fid" in r for r in read_log(run))


def train_run(args: argparse.Namespace, grid: str, variant: str, seed: int) -> None:
    from sdtgen.config import load_config
    from sdtgen.training.trainer import train

    run = run_dir(args, grid, variant, seed)
    if run.exists():  # an interrupted run starts over: its partial log would mix two runs' curves
        shutil.rmtree(run)
    train(load_config(None, run_overrides(args, grid, variant, seed)))


def summarize_run(run: Path, grid: str, variant: str, seed: int) -> dict:
    """A run's evaluation curve and final scores, from its log.jsonl."""
    log = read_log(run)
    evals = [r for r in log if "eval_fid" in r]
    return {
        "grid": grid,
        "variant": variant,
        "seed": seed,
        "curve": [{"step": r["step"], "fid": r["eval_fid"], "class_accuracy": r["eval_class_accuracy"]} for r in evals],
        "fid": evals[-1]["eval_fid"],
        "class_accuracy": evals[-1]["eval_class_accuracy"],
    }


def t_interval(values: list[float]) -> dict:
    """Mean and two-sided 95 % Student-t confidence interval of the mean (None below 2 values)."""
    from scipy import stats

    mean = statistics.mean(values)
    if len(values) < 2:
        return {"n": len(values), "mean": mean, "sd": None, "ci95": None, "established": False}
    sd = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * sd / len(values) ** 0.5
    # Equal differences (two seeds whose class accuracies differ by the same 1/1000) give a zero-width
    # interval; no spread among a few seeds is not evidence of none, so that is not called established.
    tied = sd <= 1e-9 * max(1.0, abs(mean))
    return {
        "n": len(values),
        "mean": mean,
        "sd": sd,
        "ci95": [mean - half, mean + half],
        "established": bool(not tied and (mean - half > 0 or mean + half < 0)),
    }


def paired_differences(runs: list[dict], grid: str, metric: str, baseline: str, step: int | None = None) -> dict:
    """Per variant: variant - baseline within each seed where both ran, with the interval of the mean.

    With `step`, the scores are those of the evaluation at that step of each run's curve (runs that did not
    reach it are left out); without, the final ones.
    """
    if step is None:
        by_key = {(r["variant"], r["seed"]): r[metric] for r in runs if r["grid"] == grid}
    else:
        by_key = {
            (r["variant"], r["seed"]): point[metric]
            for r in runs
            if r["grid"] == grid
            for point in r["curve"]
            if point["step"] == step
        }
    out = {}
    for variant in VARIANTS:
        seeds = sorted(s for v, s in by_key if v == variant and (baseline, s) in by_key)
        if variant == baseline or not seeds:
            continue
        diffs = [by_key[variant, s] - by_key[baseline, s] for s in seeds]
        out[variant] = {"seeds": seeds, "diffs": diffs, **t_interval(diffs)}
    return out


def load_trained(run: Path):
    """The EMA model of a run's newest checkpoint and the run's VAE."""
    from sdtgen.config import load_config
    from sdtgen.models.dit import SDTDiT
    from sdtgen.runs import list_checkpoints
    from sdtgen.vae import load_vae

    config = load_config(run / "config.yaml")
    model = SDTDiT.from_pretrained(list_checkpoints(run / "checkpoints")[-1] / "model")
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


def spread_summary(rows: list[dict]) -> dict:
    return {m: statistics.stdev([r[m] for r in rows]) if len(rows) > 1 else None for m in METRICS}


def content_summary(rows_by_run: dict[str, list[dict]]) -> list[dict]:
    """Mean over runs (seeds) and heads of each statistic, per variant, noise level and block."""
    groups: dict[tuple, list[dict]] = {}
    for name, rows in rows_by_run.items():
        variant = name.rsplit("-seed", 1)[0]
        for r in rows:
            groups.setdefault((variant, r["t"], r["block"]), []).append(r)
    return [
        {
            "variant": variant,
            "t": t,
            "block": block,
            **{k: statistics.mean(r[k] for r in rows) for k in ("contrast", "eta_squared", "spread", "mean_lam")},
            "contrast_min_head": min(r["contrast"] for r in rows),
            "contrast_max_head": max(r["contrast"] for r in rows),
        }
        for (variant, t, block), rows in sorted(groups.items())
    ]


def step_costs(grid: str, batch: int = 64, repeats: int = 7) -> dict:
    """Each variant's training step (forward + backward, the backend `auto` picks, the precision training's
    `auto` picks) timed round-robin in this process, so machine load hits all alike: median ms and x vanilla."""
    import time

    import torch

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
        for v in VARIANTS
    }
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for round_ in range(repeats + 2):  # two warm-up rounds
        for variant, model in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out = model(x, t, y)
            torch.nn.functional.mse_loss(out.float(), target).backward()
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_ >= 2:
                times[variant].append(time.perf_counter() - start)
    vanilla = statistics.median(times["vanilla"])
    return {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads",
        "precision": precision,
        "batch": batch,
        "step_ms": {v: 1000 * statistics.median(ts) for v, ts in times.items()},
        "x_vanilla": {v: statistics.median(ts) / vanilla for v, ts in times.items()},
    }


def joined(values, fmt: str = "{:.2f}") -> str:
    return " / ".join(fmt.format(v) for v in values)


def fmt_interval(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    if stat["ci95"] is None:
        return f"{stat['mean'] * scale:+.{digits}f} (1 seed)"
    lo, hi = (v * scale for v in stat["ci95"])
    mark = " **" if stat["established"] else ""
    return f"{stat['mean'] * scale:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark}"


def curve_table(paired_by_step: dict) -> list[str]:
    """Markdown rows: each paired FID and accuracy gap at every evaluated step (empty below two steps)."""
    if len(paired_by_step) < 2:
        return []
    steps = sorted(paired_by_step, key=int)
    lines = ["", "The same gaps along the training curves (mean [95 % CI] at each evaluated step):", ""]
    lines += ["| comparison | metric | " + " | ".join(f"step {s}" for s in steps) + " |"]
    lines += ["|---|---|" + "---:|" * len(steps)]
    for baseline in BASELINES:
        for variant in VARIANTS:
            if (variant, baseline) == ("vanilla", "fixed"):  # the mirror of fixed - vanilla
                continue
            for metric, scale in (("fid", 1.0), ("class_accuracy", 100.0)):
                stats = [paired_by_step[s][metric][baseline].get(variant) for s in steps]
                if any(stats):
                    cells = [fmt_interval(stat, scale, digits=1) if stat else "" for stat in stats]
                    lines.append(f"| {variant} - {baseline} | {METRICS[metric]} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    lines = []
    for grid, g in results["grids"].items():
        runs = [r for r in results["runs"] if r["grid"] == grid]
        if not runs:  # a grid asked for in --report-only before any of its runs finished
            continue
        seeds = sorted({r["seed"] for r in runs})
        lines += [f"## {grid} tokens ({GRIDS[grid]}), seeds {', '.join(map(str, seeds))}", ""]
        lines += ["| variant | FID per seed | mean FID | class acc. per seed (%) | mean acc. | step time / vanilla |"]
        lines += ["|---|---|---:|---|---:|---:|"]
        for variant in VARIANTS:
            mine = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
            if not mine:
                continue
            cost = results["cost"].get(grid, {}).get("x_vanilla", {}).get(variant)
            lines.append(
                f"| {variant} | {joined(r['fid'] for r in mine)} | {statistics.mean(r['fid'] for r in mine):.2f} "
                f"| {joined((100 * r['class_accuracy'] for r in mine), '{:.1f}')} "
                f"| {100 * statistics.mean(r['class_accuracy'] for r in mine):.1f} | {f'{cost:.2f}' if cost else '-'} |"
            )
        lines += ["", "Paired differences, mean [95 % CI] over seeds (** the interval excludes 0):", ""]
        lines += ["| variant | FID - fixed | FID - vanilla | acc. - fixed (points) | acc. - vanilla (points) |"]
        lines += ["|---|---:|---:|---:|---:|"]
        for variant in VARIANTS:
            cells = []
            for metric, scale in (("fid", 1.0), ("class_accuracy", 100.0)):
                for baseline in BASELINES:
                    stat = g["paired"][metric][baseline].get(variant)
                    cells.append(fmt_interval(stat, scale) if stat else "")
            if any(cells):
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines += curve_table(g.get("paired_by_step", {}))
        spread = g.get("eval_spread", {})
        if spread.get("runs"):
            lines += ["", "The evaluation's own spread (same model, different sampling seeds):", ""]
            lines += [
                "| run | sampling seeds | FID | class acc. (%) | FID sd | acc. sd (points) |",
                "|---|---|---|---|---:|---:|",
            ]
            for name, rows in spread["runs"].items():
                sd = spread_summary(rows)
                lines.append(
                    f"| {name} | {', '.join(str(r['sampling_seed']) for r in rows)} "
                    f"| {joined(r['fid'] for r in rows)} "
                    f"| {joined((100 * r['class_accuracy'] for r in rows), '{:.1f}')} "
                    f"| {sd['fid']:.2f} | {100 * sd['class_accuracy']:.2f} |"
                )
            if spread.get("paired_sdt_minus_fixed"):
                p = spread["paired_sdt_minus_fixed"]
                lines.append(
                    f"| sdt - fixed, same sampling seeds | | {joined(p['fid'], '{:+.2f}')} "
                    f"| {joined((100 * d for d in p['class_accuracy']), '{:+.1f}')} "
                    f"| {statistics.stdev(p['fid']):.2f} | {100 * statistics.stdev(p['class_accuracy']):.2f} |"
                )
        if g.get("content_summary"):
            lines += [
                "",
                "Content dependence of the log decay (test-split silhouettes; mean over seeds and heads):",
                "",
            ]
            lines += ["| variant | t | block | object - background lam | eta^2 | spread | mean lam |"]
            lines += ["|---|---:|---:|---:|---:|---:|---:|"]
            for r in g["content_summary"]:
                lines.append(
                    f"| {r['variant']} | {r['t']:.2f} | {r['block']} | {r['contrast']:+.3f} "
                    f"[{r['contrast_min_head']:+.3f}, {r['contrast_max_head']:+.3f}] | {r['eta_squared']:.2f} "
                    f"| {r['spread']:.2f} | {r['mean_lam']:.3f} |"
                )
        lines.append("")
    if results["cost"]:
        grids = sorted(results["cost"], key=int)
        first = results["cost"][grids[0]]
        precision = {"no": "fp32"}.get(first["precision"], first["precision"])  # "no" is accelerate's word for none
        lines += [f"## Cost: one training step, batch {first['batch']}, {first['device']}, {precision}", ""]
        lines += ["| variant | " + " | ".join(f"{g} tokens: ms | x vanilla" for g in grids) + " |"]
        lines += ["|---|" + "---:|---:|" * len(grids)]
        for variant in VARIANTS:
            cells = [
                f"{results['cost'][g]['step_ms'][variant]:.0f} | {results['cost'][g]['x_vanilla'][variant]:.2f}"
                for g in grids
            ]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = sorted({r["grid"] for r in results["runs"]}, key=int)
    if not grids:
        return
    colors = dict(zip(VARIANTS, ("#888888", "#dd8452", "#937860", "#4c72b0", "#55a868"), strict=True))
    fig, axes = plt.subplots(2, len(grids), figsize=(5 * len(grids), 6.4), dpi=120, squeeze=False)
    for col, grid in enumerate(grids):
        for row, metric in enumerate(METRICS):
            ax = axes[row, col]
            for variant in VARIANTS:
                runs = [r for r in results["runs"] if r["grid"] == grid and r["variant"] == variant]
                if not runs:
                    continue
                for r in runs:
                    ax.plot(
                        [p["step"] for p in r["curve"]],
                        [p[metric] for p in r["curve"]],
                        color=colors[variant],
                        alpha=0.2,
                    )
                steps = sorted({p["step"] for r in runs for p in r["curve"]})
                means = [statistics.mean(p[metric] for r in runs for p in r["curve"] if p["step"] == s) for s in steps]
                ax.plot(steps, means, color=colors[variant], marker="o", label=variant)
            ax.set_title(f"{grid} tokens: {METRICS[metric]} (mean over seeds; faint: each seed)", fontsize=8)
            ax.set_xlabel("training step", fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png")
    plt.close(fig)

    fig, axes = plt.subplots(2, len(grids), figsize=(5 * len(grids), 6.4), dpi=120, squeeze=False)
    for col, grid in enumerate(grids):
        for row, (metric, scale) in enumerate((("fid", 1.0), ("class_accuracy", 100.0))):
            ax = axes[row, col]
            ticks = []
            for baseline in BASELINES:
                for variant, stat in results["grids"][grid]["paired"][metric][baseline].items():
                    x = len(ticks)
                    ticks.append(f"{variant}\n- {baseline}")
                    mean = stat["mean"] * scale
                    err = (
                        None
                        if stat["ci95"] is None
                        else [[mean - stat["ci95"][0] * scale], [stat["ci95"][1] * scale - mean]]
                    )
                    ax.errorbar(x, mean, yerr=err, fmt="o", color=colors[variant], capsize=3)
                    ax.scatter([x + 0.15] * len(stat["diffs"]), [d * scale for d in stat["diffs"]], s=8, color="black")
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_xticks(range(len(ticks)), ticks, fontsize=6)
            unit = " (points)" if metric == "class_accuracy" else ""
            ax.set_title(f"{grid} tokens: paired {METRICS[metric]} difference{unit}, mean and 95 % CI", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "paired.png")
    plt.close(fig)

    content = [(grid, g["content_summary"]) for grid, g in results["grids"].items() if g.get("content_summary")]
    if content:
        fig, axes = plt.subplots(1, len(content), figsize=(5 * len(content), 3.4), dpi=120, squeeze=False)
        for ax, (grid, rows) in zip(axes[0], content, strict=True):
            for variant in GATED:
                for block in sorted({r["block"] for r in rows}):
                    mine = [r for r in rows if r["variant"] == variant and r["block"] == block]
                    if mine:
                        style = "-" if variant == "sdt" else "--"
                        ax.plot(
                            [r["t"] for r in mine],
                            [r["contrast"] for r in mine],
                            style,
                            marker="o",
                            label=f"{variant} block {block}",
                        )
            ax.axhline(0, color="black", linewidth=0.6)
            ax.set_xlabel("noise level t (0 data, 1 noise)", fontsize=8)
            ax.set_title(f"{grid} tokens: object - background log decay", fontsize=8)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "content.png")
        plt.close(fig)


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
    for variant in GATED:
        for seed in args.seeds:
            run = run_dir(args, grid, variant, seed)
            if run.name not in content and finished(run, args.steps) and not args.report_only:
                content[run.name] = content_rows(run, args)
    g["content_summary"] = content_summary(content)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", nargs="+", default=["64"], choices=list(GRIDS), help="token grids (default: 64)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
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
    previous = json.loads(results_path.read_text()) if results_path.is_file() else {}
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
        results_path.write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    plot(results, out)
    print((out / "results.md").read_text())
    if args.publish:
        target = Path(args.publish)
        target.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            if (out / name).is_file():
                shutil.copy2(out / name, target / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
