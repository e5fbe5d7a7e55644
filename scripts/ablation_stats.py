"""What the ablation compares (token grids, baselines, metrics) and its statistics over seeds.

Shared by the study (scripts/ablation.py), which stores them in results.json, and its report
(scripts/ablation_report.py), which shows them.
"""

from __future__ import annotations

import statistics

from sdtgen.models.attention import ATTENTION_VARIANTS

BASELINES = ("fixed", "vanilla")
METRICS = {"fid": "FID", "class_accuracy": "class accuracy"}
# token grid -> preset on the built-in 16 x 16 latents: patch 2 gives 8 x 8 tokens, patch 1 gives 16 x 16
GRIDS = {"64": "T/2", "256": "T/1"}


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
    for variant in ATTENTION_VARIANTS:
        seeds = sorted(s for v, s in by_key if v == variant and (baseline, s) in by_key)
        if variant == baseline or not seeds:
            continue
        diffs = [by_key[variant, s] - by_key[baseline, s] for s in seeds]
        out[variant] = {"seeds": seeds, "diffs": diffs, **t_interval(diffs)}
    return out


def spread_summary(rows: list[dict]) -> dict:
    """The standard deviation of each metric over the rows of one model's sampling seeds (None for one row)."""
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
