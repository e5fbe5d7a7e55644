"""The recipe ladder's report: its table per budget and FID against images seen, from the
results file of scripts/sweep_recipe.py.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path


def table(results: dict[str, dict], steps: int, rows: Iterable[str]) -> str:
    """One line per row of `rows` (in their order) at `steps`: mean over seeds (and each seed), class accuracy,
    worst class, cost."""
    lines = [
        "| row | seeds | FID (mean; per seed) | class acc. (mean) | worst class | images | GFLOP / image | images/s |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        runs = [r for r in results.values() if r["row"] == row and r["steps"] == steps]
        if not runs:
            continue
        fids = [r["fid"] for r in runs]
        accs = [r["class_accuracy"] for r in runs]
        per_class = {
            c: statistics.mean(r["class_accuracy_per_class"][c] for r in runs)
            for c in runs[0]["class_accuracy_per_class"]
        }
        worst = min(per_class, key=per_class.get)
        lines.append(
            f"| {row} | {len(runs)} | {statistics.mean(fids):.2f} ({' / '.join(f'{f:.2f}' for f in fids)}) "
            f"| {statistics.mean(accs):.1%} | {worst} {per_class[worst]:.0%} | {runs[0]['images_seen']:,} "
            f"| {runs[0]['train_flops_per_image'] / 1e9:.2f} | {statistics.median(r['images_per_s'] for r in runs):.0f} |"
        )
    return "\n".join(lines)


def plot(results: dict[str, dict], rows: list[str], path: Path) -> None:
    """FID against images seen, one line per run of `rows` (its evaluations along the way, or its final one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results.values():
        if r["row"] in rows:
            ax.plot(
                [p["images"] for p in r["curve"]],
                [p["fid"] for p in r["curve"]],
                marker="o",
                label=f"{r['row']} (a budget of {r['images_seen']:,} images, seed {r['seed']})",
            )
    ax.set_xlabel("images seen")
    ax.set_ylabel("FID (1,000 samples)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
