"""scripts/ablation.py: its statistics against closed forms and brute force, its run bookkeeping on logs.

The script end to end (training, evaluation, the eval's spread, content statistics, report) runs shrunk in
tests/test_docs.py, from docs/ablation.md's own command.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import pytest

from sdtgen.models.attention import ATTENTION_VARIANTS
from tiny_runs import REPO

sys.path.insert(0, str(REPO / "scripts"))  # where the scripts import their sibling modules from
import ablation  # noqa: E402
from ablation_report import curve_table  # noqa: E402
from ablation_stats import paired_differences, t_interval  # noqa: E402


def test_t_interval_closed_form():
    # values 1, 2, 3: mean 2, sd 1, t(0.975, df 2) = 4.302653 (any t table), half width 4.302653 / sqrt(3)
    stat = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)
    assert stat["mean"] == 2.0 and stat["sd"] == 1.0 and stat["n"] == 3
    assert stat["ci95"] == pytest.approx([2 - half, 2 + half], abs=1e-5)
    assert not stat["established"]  # [-0.48, 4.48] holds 0
    # five seeds, df 4: t = 2.776445
    stat = t_interval([0.5, 0.7, 0.6, 0.4, 0.8])
    half = 2.776445 * stat["sd"] / math.sqrt(5)
    assert stat["ci95"] == pytest.approx([0.6 - half, 0.6 + half], abs=1e-5) and stat["established"]
    assert t_interval([0.3])["ci95"] is None
    # two seeds, both +0.01 (tied accuracies, up to rounding): a zero-width interval, not evidence
    tied = t_interval([0.472 - 0.462, 0.497 - 0.487])
    assert tied["ci95"] == pytest.approx([0.01, 0.01]) and not tied["established"]


def test_paired_differences_brute_force():
    fid = {("vanilla", 0): 50.0, ("fixed", 0): 48.0, ("sdt", 0): 47.0, ("vanilla", 1): 52.0, ("fixed", 1): 49.5}
    fid[("sdt", 1)] = 50.0
    fid[("sdt", 2)] = 40.0  # no fixed run in seed 2: not paired
    runs = [{"grid": "64", "variant": v, "seed": s, "fid": f} for (v, s), f in fid.items()]
    runs.append({"grid": "256", "variant": "fixed", "seed": 2, "fid": 0.0})  # another grid: ignored
    paired = paired_differences(runs, "64", "fid", "fixed")
    assert set(paired) == {"vanilla", "sdt"}
    assert paired["sdt"]["seeds"] == [0, 1] and paired["sdt"]["diffs"] == [-1.0, 0.5]
    assert paired["vanilla"]["diffs"] == [2.0, 2.5] and paired["vanilla"]["mean"] == 2.25


def test_paired_differences_at_a_step_of_the_curves():
    def run(variant, seed, curve):
        points = [{"step": step, "fid": fid, "class_accuracy": acc} for step, fid, acc in curve]
        return {"grid": "64", "variant": variant, "seed": seed, "curve": points, **points[-1]}

    runs = [
        run("fixed", 0, [(100, 90.0, 0.1), (200, 60.0, 0.2)]),
        run("sdt", 0, [(100, 70.0, 0.3), (200, 61.0, 0.1)]),
        run("fixed", 1, [(100, 80.0, 0.1), (200, 50.0, 0.2)]),
        run("sdt", 1, [(100, 75.0, 0.2), (200, 52.0, 0.4)]),
        run("sdt", 2, [(100, 10.0, 0.9)]),  # stopped early, and no fixed run: not paired
    ]
    at_100 = paired_differences(runs, "64", "fid", "fixed", step=100)["sdt"]
    assert at_100["seeds"] == [0, 1] and at_100["diffs"] == [-20.0, -5.0] and at_100["mean"] == -12.5
    accuracy = paired_differences(runs, "64", "class_accuracy", "fixed", step=100)["sdt"]
    assert accuracy["diffs"] == pytest.approx([0.2, 0.1])
    # the last step of the curve is the final score
    final = paired_differences(runs, "64", "fid", "fixed")["sdt"]
    assert paired_differences(runs, "64", "fid", "fixed", step=200)["sdt"]["diffs"] == final["diffs"]
    by_step = {
        str(step): {
            m: {b: paired_differences(runs, "64", m, b, step) for b in ("fixed", "vanilla")}
            for m in ("fid", "class_accuracy")
        }
        for step in (100, 200)
    }
    table = "\n".join(curve_table(by_step))
    assert "| sdt - fixed | FID | -12.5 [" in table and "| step 100 | step 200 |" in table
    assert curve_table({"200": by_step["200"]}) == []  # one step: the final table says it all


def test_summarize_run_reads_the_curve_from_the_log(tmp_path):
    log = [
        {"step": 50, "images_per_s": 80.0},
        {"step": 100, "images_per_s": 20.0, "eval_fid": 90.0, "eval_class_accuracy": 0.2},
        {"step": 150, "images_per_s": 90.0},
        {"step": 200, "images_per_s": 5.0, "eval_fid": 70.0, "eval_class_accuracy": 0.3},
    ]
    # The last line torn, as by a run killed while writing it: not a record.
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + '\n{"step": 25')
    summary = ablation.summarize_run(tmp_path, "64", "sdt", 3)
    assert summary["curve"] == [
        {"step": 100, "fid": 90.0, "class_accuracy": 0.2},
        {"step": 200, "fid": 70.0, "class_accuracy": 0.3},
    ]
    assert (summary["fid"], summary["class_accuracy"]) == (70.0, 0.3)
    assert ablation.finished(tmp_path, 200) and not ablation.finished(tmp_path, 300)
    # A bad line before the last is corruption, not a torn write.
    (tmp_path / "log.jsonl").write_text('{"step": 25\n' + json.dumps(log[-1]) + "\n")
    with pytest.raises(ValueError, match="line 1 is not a JSON record"):
        ablation.finished(tmp_path, 200)


def test_step_costs_time_every_variant_against_vanilla():
    cost = ablation.step_costs("64", batch=2, repeats=1)
    assert set(cost["x_vanilla"]) == set(ATTENTION_VARIANTS) and cost["x_vanilla"]["vanilla"] == 1.0
    assert all(ms > 0 for ms in cost["step_ms"].values())


def test_run_overrides_change_only_attention_and_seed_within_a_grid():
    args = argparse.Namespace(
        out="runs/x", steps=200, eval_every=100, eval_samples=500, eval_steps=8, latent_cache="cache/a"
    )
    a = ablation.run_overrides(args, "64", "fixed", 0)
    b = ablation.run_overrides(args, "64", "sdt", 1)
    differ = {x.split("=")[0] for x in set(a) ^ set(b)}
    assert differ == {"output_dir", "model.attention", "seed"}
    assert "model.preset=T/1" in ablation.run_overrides(args, "256", "sdt", 1)
