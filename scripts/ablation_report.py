"""The ablation's report: the tables (results.md) and plots (curves.png, paired.png, content.png)
of a results.json that scripts/ablation.py wrote, from that file alone (its study says what to compare).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ablation_stats import GRIDS, METRICS, Study, spread_summary, study_of

FILES = ("results.md", "curves.png", "paired.png", "content.png")  # what write_report writes (content.png if any)
COLORS = {
    "vanilla": "#888888",
    "fixed": "#dd8452",
    "learned-fixed": "#937860",
    "sdt": "#4c72b0",
    "sdt-decomposed": "#55a868",
    "sdt-norope": "#8172b3",
    "vanilla-norope": "#333333",
}


def write_report(results: dict, out: Path) -> str:
    """The tables (results.md) and plots of `results` in `out`; returns the tables."""
    tables = markdown(results)
    (out / "results.md").write_text(tables)
    plot(results, out)
    return tables


def joined(values, fmt: str = "{:.2f}") -> str:
    """Values as "a / b / c"."""
    return " / ".join(fmt.format(v) for v in values)


def fmt_interval(stat: dict, scale: float = 1.0, digits: int = 2) -> str:
    """A paired statistic as "mean [low, high]", ** when the interval excludes 0."""
    if stat["ci95"] is None:
        return f"{stat['mean'] * scale:+.{digits}f} (1 seed)"
    lo, hi = (v * scale for v in stat["ci95"])
    mark = " **" if stat["established"] else ""
    return f"{stat['mean'] * scale:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark}"


def curve_table(paired_by_step: dict, study: Study) -> list[str]:
    """Markdown rows: each paired FID and accuracy gap at every evaluated step (empty below two steps).

    A pair compared both ways (fixed - vanilla, vanilla - fixed) has one row, against its later baseline.
    """
    if len(paired_by_step) < 2:
        return []
    steps = sorted(paired_by_step, key=int)
    baselines = study.baselines
    lines = []
    for variant, baseline in study.comparisons:
        if (baseline, variant) in study.comparisons and baselines.index(variant) > baselines.index(baseline):
            continue
        for metric, scale in (("fid", 1.0), ("class_accuracy", 100.0)):
            stats = [paired_by_step[s][metric][baseline].get(variant) for s in steps]
            if any(stats):
                cells = [fmt_interval(stat, scale, digits=1) if stat else "" for stat in stats]
                lines.append(f"| {variant} - {baseline} | {METRICS[metric]} | " + " | ".join(cells) + " |")
    if not lines:  # no seed has both sides of any comparison yet
        return []
    head = ["", "The same gaps along the training curves (mean [95 % CI] at each evaluated step):", ""]
    head += [
        "| comparison | metric | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|" + "---:|" * len(steps),
    ]
    return head + lines


def markdown(results: dict) -> str:
    """Per grid: the scores, paired differences, curves, eval spread and content rows; then the step costs."""
    study = study_of(results)
    lines = []
    for grid, g in results["grids"].items():
        runs = [r for r in results["runs"] if r["grid"] == grid]
        if not runs:  # a grid asked for in --report-only before any of its runs finished
            continue
        seeds = sorted({r["seed"] for r in runs})
        lines += [f"## {grid} tokens ({GRIDS[grid]}), seeds {', '.join(map(str, seeds))}", ""]
        lines += ["| variant | FID per seed | mean FID | class acc. per seed (%) | mean acc. | step time / vanilla |"]
        lines += ["|---|---|---:|---|---:|---:|"]
        for variant in study.variants:
            mine = sorted((r for r in runs if r["variant"] == variant), key=lambda r: r["seed"])
            if not mine:
                continue
            cost = results["cost"].get(grid, {}).get("x_vanilla", {}).get(variant)
            lines.append(
                f"| {variant} | {joined(r['fid'] for r in mine)} | {statistics.mean(r['fid'] for r in mine):.2f} "
                f"| {joined((100 * r['class_accuracy'] for r in mine), '{:.1f}')} "
                f"| {100 * statistics.mean(r['class_accuracy'] for r in mine):.1f} | {f'{cost:.2f}' if cost else '-'} |"
            )
        columns = [f"FID - {b}" for b in study.baselines] + [f"acc. - {b} (points)" for b in study.baselines]
        rows = []
        for variant in study.variants:
            cells = []
            for metric, scale in (("fid", 1.0), ("class_accuracy", 100.0)):
                for baseline in study.baselines:
                    stat = g["paired"][metric][baseline].get(variant)
                    cells.append(fmt_interval(stat, scale) if stat else "")
            if any(cells):
                rows.append(f"| {variant} | " + " | ".join(cells) + " |")
        if rows:  # none until some seed has both sides of a comparison
            lines += ["", "Paired differences, mean [95 % CI] over seeds (** the interval excludes 0):", ""]
            lines += ["| variant | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns), *rows]
        lines += curve_table(g.get("paired_by_step", {}), study)
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
        for variant in (v for v in study.variants if v in first["step_ms"]):
            cells = [
                f"{results['cost'][g]['step_ms'][variant]:.0f} | {results['cost'][g]['x_vanilla'][variant]:.2f}"
                for g in grids
            ]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    """FID and accuracy curves, paired differences with their intervals, and the content contrast (if measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = study_of(results)
    grids = sorted({r["grid"] for r in results["runs"]}, key=int)
    if not grids:
        return
    fig, axes = plt.subplots(2, len(grids), figsize=(5 * len(grids), 6.4), dpi=120, squeeze=False)
    for col, grid in enumerate(grids):
        for row, metric in enumerate(METRICS):
            ax = axes[row, col]
            for variant in study.variants:
                runs = [r for r in results["runs"] if r["grid"] == grid and r["variant"] == variant]
                if not runs:
                    continue
                for r in runs:
                    ax.plot(
                        [p["step"] for p in r["curve"]],
                        [p[metric] for p in r["curve"]],
                        color=COLORS[variant],
                        alpha=0.2,
                    )
                steps = sorted({p["step"] for r in runs for p in r["curve"]})
                means = [statistics.mean(p[metric] for r in runs for p in r["curve"] if p["step"] == s) for s in steps]
                ax.plot(steps, means, color=COLORS[variant], marker="o", label=variant)
            ax.set_title(f"{grid} tokens: {METRICS[metric]} (mean over seeds; faint: each seed)", fontsize=8)
            ax.set_xlabel("training step", fontsize=8)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png")
    plt.close(fig)

    paired = [grid for grid in grids if any(results["grids"][grid]["paired"]["fid"].values())]  # grids with a pair
    fig, axes = plt.subplots(2, max(len(paired), 1), figsize=(5 * max(len(paired), 1), 6.4), dpi=120, squeeze=False)
    for col, grid in enumerate(paired):
        for row, (metric, scale) in enumerate((("fid", 1.0), ("class_accuracy", 100.0))):
            ax = axes[row, col]
            ticks = []
            for variant, baseline in study.comparisons:
                stat = results["grids"][grid]["paired"][metric][baseline].get(variant)
                if stat is None:
                    continue
                x = len(ticks)
                ticks.append(f"{variant}\n- {baseline}")
                mean = stat["mean"] * scale
                err = (
                    None
                    if stat["ci95"] is None
                    else [[mean - stat["ci95"][0] * scale], [stat["ci95"][1] * scale - mean]]
                )
                ax.errorbar(x, mean, yerr=err, fmt="o", color=COLORS[variant], capsize=3)
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
            for variant in study.content_gated:
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
