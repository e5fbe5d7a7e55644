"""The paper's comparison at built-in scale: every attention variant, same budget, data and seeds.

    python scripts/ablation.py                                   # 5 variants x 1 seed, ~35 min on 2 CPU cores
    python scripts/ablation.py --seeds 0 1 --steps 600           # the fuller version (~90 min)

Each variant trains the built-in default (T/2, flow matching, the animals latents) with
only `model.attention` changed: the same data order and random draws (they are functions
of (seed, step)), the same steps and batch. Each is then scored by `sdtgen eval` (its metrics.json in <run>/eval):
class-balanced samples, the built-in feature network. Results go to
`<out>/results.json` and `<out>/ablation.png` (bars: the mean over seeds, dots: each seed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

VARIANTS = ("vanilla", "fixed", "learned-fixed", "sdt", "sdt-decomposed")


def run_variant(variant: str, seed: int, args: argparse.Namespace) -> dict:
    from sdtgen.cli import main as sdtgen
    from sdtgen.config import load_config
    from sdtgen.training.trainer import train

    run_dir = Path(args.out) / f"{variant}-seed{seed}"
    overrides = [
        f"output_dir={run_dir}",
        f"model.attention={variant}",
        f"seed={seed}",
        f"train.max_steps={args.steps}",
        f"train.checkpoint_every={args.steps}",
        f"data.latent_cache={args.latent_cache}",
        "sample.per_class=4",
    ]
    start = time.perf_counter()
    train(load_config(None, overrides))
    train_seconds = time.perf_counter() - start
    sdtgen(
        [
            "eval",
            "--ckpt",
            str(run_dir),
            "--num-samples",
            str(args.num_samples),
            "--seed",
            str(seed),
            "--steps",
            str(args.sample_steps),
            "--out",
            str(run_dir / "eval"),
        ]
    )
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    return {
        "variant": variant,
        "seed": seed,
        "train_seconds": round(train_seconds, 1),
        **{k: metrics[k] for k in ("fid", "class_accuracy", "is", "precision", "recall")},
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=120)
    for ax, key, label in (
        (axes[0], "fid", "FID (lower is better)"),
        (axes[1], "class_accuracy", "class accuracy (higher is better)"),
    ):
        for x, variant in enumerate(VARIANTS):
            values = [r[key] for r in results if r["variant"] == variant]
            if values:
                ax.bar(x, statistics.mean(values), color="#4c72b0" if variant.startswith("sdt") else "#999999")
                ax.scatter([x] * len(values), values, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(VARIANTS)), VARIANTS, rotation=20, fontsize=8)
        ax.set_title(label, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps per run (default: 400)")
    parser.add_argument("--num-samples", type=int, default=500, help="evaluation samples per run (default: 500)")
    parser.add_argument("--sample-steps", type=int, default=25, help="Euler steps for the evaluation samples")
    parser.add_argument("--latent-cache", default="cache/animals-latents")
    parser.add_argument("--out", default="runs/ablation")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["variant"], r["seed"]) for r in results}
    for seed in args.seeds:
        for variant in args.variants:
            if (variant, seed) in done:  # re-running continues an interrupted comparison
                continue
            results.append(run_variant(variant, seed, args))
            results_path.write_text(json.dumps(results, indent=2))
            print(json.dumps(results[-1]), flush=True)
    plot(results, out / "ablation.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
