"""What each ablation study trains and compares (STUDIES; token grids, metrics) and its statistics over seeds.

Shared by the study (scripts/ablation.py), which stores the statistics in its results file, and its report
(scripts/ablation_report.py), which shows them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace

from sweep_recipe import OLD_RECIPE

from sdtgen.config import RunConfig
from sdtgen.models.attention import ATTENTION_VARIANTS, CONTENT_GATED

METRICS = {"fid": "FID", "class_accuracy": "class accuracy"}
# token grid -> preset on the built-in 16 x 16 latents: patch 2 gives 8 x 8 tokens, patch 1 gives 16 x 16
GRIDS = {"64": "T/2", "256": "T/1"}


@dataclass(frozen=True)
class Study:
    """An ablation study: each run trains `recipe`, then its variant's overrides, at one grid and seed.

    `steps`, `eval_every`, `eval_samples` and `eval_steps` are its protocol's defaults (eval_steps None: the
    recipe's sampler steps), `out` the folder of its runs and results, `published` where docs keep a copy of them.
    """

    name: str
    recipe: tuple[str, ...]  # overrides of the default config shared by every run
    variants: dict[str, tuple[str, ...]]  # name -> its own overrides, in the tables' order
    comparisons: tuple[tuple[str, str], ...]  # (variant, baseline): the paired differences it reports
    steps: int
    eval_every: int
    eval_samples: int
    eval_steps: int | None
    out: str
    published: str

    @property
    def baselines(self) -> list[str]:
        """The comparisons' baselines, in the order they first appear."""
        return list(dict.fromkeys(baseline for _, baseline in self.comparisons))

    def attention(self, variant: str) -> str:
        """The attention variant (`model.attention`) a study variant trains."""
        return next(o.split("=", 1)[1] for o in self.variants[variant] if o.startswith("model.attention="))

    @property
    def content_gated(self) -> list[str]:
        """The variants whose decay has a content gate: those the content statistic measures."""
        return [v for v in self.variants if self.attention(v) in CONTENT_GATED]

    def paired(self, runs: list[dict], grid: str, metric: str, step: int | None = None) -> dict[str, dict]:
        """paired_differences of each comparison, by baseline, then variant."""
        return {
            baseline: paired_differences(
                runs, grid, metric, baseline, [v for v, b in self.comparisons if b == baseline], step
            )
            for baseline in self.baselines
        }


def with_rope(attention: str, rope: bool) -> tuple[str, ...]:
    """A variant's overrides: its attention, and RoPE on or off."""
    return (f"model.attention={attention}", f"model.rope={str(rope).lower()}")


MAIN_JOB = RunConfig().train
# The current recipe (docs/recipe.md: the default config) at the main job's length, every attention with RoPE, and
# sdt and vanilla also without it: which of the two position mechanisms gives what.
ROPE = Study(
    name="rope",
    recipe=(),
    variants={
        **{v: with_rope(v, True) for v in ATTENTION_VARIANTS},
        "sdt-norope": with_rope("sdt", False),
        "vanilla-norope": with_rope("vanilla", False),
    },
    comparisons=(
        ("sdt", "fixed"),
        ("sdt", "vanilla"),
        ("fixed", "vanilla"),
        ("sdt", "sdt-norope"),
        ("vanilla", "vanilla-norope"),
        ("learned-fixed", "fixed"),
        ("sdt-decomposed", "fixed"),
    ),
    steps=MAIN_JOB.max_steps,
    eval_every=MAIN_JOB.max_steps // 4,  # four evaluations a run
    eval_samples=MAIN_JOB.eval_samples,
    eval_steps=None,
    out="runs/ablation-rope",
    published="docs/ablation-rope",
)
STUDIES = {
    study.name: study
    for study in (
        ROPE,
        # The same study on the default before the learning rate and guidance moved (lr 2e-3, guidance 3): five
        # seeds at 64 tokens, docs/ablation.md's answer until `rope` has its seeds.
        replace(
            ROPE,
            name="rope-lr2e-3",
            recipe=("train.lr=2e-3", "sample.guidance_scale=3"),
            out="runs/ablation-rope-lr2e-3",
            published="docs/ablation-rope-lr2e-3",
        ),
        # The recipe before the ladder (DiT as it was in 2023: GELU, LayerNorm, no RoPE, batch 64), shortened to
        # 200 steps: docs/ablation.md's history. Every variant against both baselines.
        Study(
            name="dit2023",
            recipe=tuple(OLD_RECIPE),
            variants={v: (f"model.attention={v}",) for v in ATTENTION_VARIANTS},
            comparisons=tuple((v, b) for b in ("fixed", "vanilla") for v in ATTENTION_VARIANTS if v != b),
            steps=200,
            eval_every=100,
            eval_samples=500,
            eval_steps=8,
            out="runs/ablation",
            published="docs/ablation",
        ),
    )
}


def study_of(results: dict) -> Study:
    """The study a results file holds; files written before studies had names hold the 2023 one."""
    return STUDIES[results.get("study", "dit2023")]


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


def paired_differences(
    runs: list[dict], grid: str, metric: str, baseline: str, variants: list[str], step: int | None = None
) -> dict:
    """Per variant of `variants`: variant - baseline within each seed where both ran, with the interval of the mean.

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
    for variant in variants:
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
