"""scripts/ablation.py: its statistics against closed forms and brute force, its run bookkeeping on logs and
configs, the 2023 study's report against the committed one, and the current study end to end, shrunk.

The 2023 study end to end runs shrunk in tests/test_docs.py, from docs/ablation.md's own command.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys

import pytest

from doc_commands import link_repo_folders, run, scratch_env
from sdtgen.config import config_to_dict, load_config, save_config
from tiny_runs import REPO

sys.path.insert(0, str(REPO / "scripts"))  # where the scripts import their sibling modules from
import ablation  # noqa: E402
from ablation_report import curve_table, markdown  # noqa: E402
from ablation_stats import STUDIES, paired_differences, t_interval  # noqa: E402

ROPE, DIT2023 = STUDIES["rope"], STUDIES["dit2023"]


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
    paired = paired_differences(runs, "64", "fid", "fixed", ["vanilla", "fixed", "sdt"])
    assert set(paired) == {"vanilla", "sdt"}
    assert paired["sdt"]["seeds"] == [0, 1] and paired["sdt"]["diffs"] == [-1.0, 0.5]
    assert paired["vanilla"]["diffs"] == [2.0, 2.5] and paired["vanilla"]["mean"] == 2.25
    assert set(paired_differences(runs, "64", "fid", "fixed", ["sdt"])) == {"sdt"}  # only the variants asked for


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
    at_100 = paired_differences(runs, "64", "fid", "fixed", ["sdt"], step=100)["sdt"]
    assert at_100["seeds"] == [0, 1] and at_100["diffs"] == [-20.0, -5.0] and at_100["mean"] == -12.5
    accuracy = paired_differences(runs, "64", "class_accuracy", "fixed", ["sdt"], step=100)["sdt"]
    assert accuracy["diffs"] == pytest.approx([0.2, 0.1])
    # the last step of the curve is the final score
    final = paired_differences(runs, "64", "fid", "fixed", ["sdt"])["sdt"]
    assert paired_differences(runs, "64", "fid", "fixed", ["sdt"], step=200)["sdt"]["diffs"] == final["diffs"]
    for study in (DIT2023, ROPE):
        by_step = {
            str(step): {m: study.paired(runs, "64", m, step) for m in ("fid", "class_accuracy")} for step in (100, 200)
        }
        table = "\n".join(curve_table(by_step, study))
        assert "| sdt - fixed | FID | -12.5 [" in table and "| step 100 | step 200 |" in table
        assert curve_table({"200": by_step["200"]}, study) == []  # one step: the final table says it all


def test_the_2023_reports_regenerate_from_their_results_files():
    # docs/ablation.md's history: the tables the script published, from their results files alone, byte for byte.
    for folder in ("ablation", "ablation-full"):
        results = json.loads((REPO / "docs" / folder / "results.json").read_text())
        assert markdown(results) == (REPO / "docs" / folder / "results.md").read_text(), folder


def test_summarize_run_reads_the_curve_from_the_log(tmp_path):
    log = [
        {"step": 50, "images_per_s": 80.0},
        {"step": 100, "images_per_s": 20.0, "eval_fid": 90.0, "eval_class_accuracy": 0.2},
        {"step": 150, "images_per_s": 90.0},
        {"step": 200, "images_per_s": 5.0, "eval_fid": 70.0, "eval_class_accuracy": 0.3},
    ]
    # The last line torn, as by a run killed while writing it: not a record.
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + '\n{"step": 25')
    save_config(load_config(None, ["model.attention=sdt", "seed=3"]), tmp_path / "config.yaml")
    summary = ablation.summarize_run(tmp_path, "64", "sdt", 3, ["model.attention=sdt", "seed=3"])
    assert summary["overrides"] == ["model.attention=sdt", "seed=3"]
    assert summary["config"]["seed"] == 3 and summary["config"]["train.betas"] == list(load_config().train.betas)
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
    cost = ablation.step_costs(ROPE, "64", batch=2, repeats=1)
    assert set(cost["x_vanilla"]) == set(ROPE.variants) and cost["x_vanilla"]["vanilla"] == 1.0
    assert all(ms > 0 for ms in cost["step_ms"].values()) and cost["batch"] == 2


def protocol(out, steps=200, eval_every=100, eval_samples=500, eval_steps=8) -> argparse.Namespace:
    """The arguments the script's run bookkeeping reads."""
    return argparse.Namespace(
        out=str(out),
        steps=steps,
        eval_every=eval_every,
        eval_samples=eval_samples,
        eval_steps=eval_steps,
        latent_cache="cache/animals-latents",
    )


def differing_keys(a: list[str], b: list[str]) -> set[str]:
    return {x.split("=")[0] for x in set(a) ^ set(b)}


def test_run_overrides_change_only_the_variant_and_seed_within_a_grid():
    args = protocol("runs/x")
    for study in (DIT2023, ROPE):
        a = ablation.run_overrides(args, study, "64", "fixed", 0)
        b = ablation.run_overrides(args, study, "64", "sdt", 1)
        assert differing_keys(a, b) == {"output_dir", "model.attention", "seed"}
        assert "model.preset=T/1" in ablation.run_overrides(args, study, "256", "sdt", 1)
    a, b = (ablation.run_overrides(args, ROPE, "64", v, 0) for v in ("sdt", "sdt-norope"))
    assert differing_keys(a, b) == {"output_dir", "model.rope"}
    a, b = (ablation.run_overrides(args, ROPE, "64", v, 0) for v in ("vanilla", "vanilla-norope"))
    assert differing_keys(a, b) == {"output_dir", "model.rope"}


def flat_config(overrides: list[str]) -> dict:
    return ablation.flat(config_to_dict(load_config(None, overrides)))


def test_the_studies_train_their_recipes():
    # rope: the main job's config (recipe and length) but for the variant's attention and RoPE, the seed, the
    # evaluations during training, the grid's picture size and the bookkeeping of resuming.
    args = protocol("runs/x", ROPE.steps, ROPE.eval_every, ROPE.eval_samples, ROPE.eval_steps)
    main_job = flat_config([])
    may_differ = {"model.attention", "model.rope", "seed", "output_dir", "sample.per_class", "train.eval_every"}
    may_differ |= {"train.keep_checkpoints", "train.resume"}
    for variant in ROPE.variants:
        run = flat_config(ablation.run_overrides(args, ROPE, "64", variant, 3))
        differ = {key for key in main_job if run[key] != main_job[key]}
        assert differ <= may_differ, differ
        assert run["model.rope"] == (not variant.endswith("-norope"))
    # dit2023: the recipe before the ladder, whatever the defaults are now.
    run = flat_config(ablation.run_overrides(protocol("runs/x"), DIT2023, "64", "sdt", 0))
    old_recipe = {"model.rope": False, "model.mlp": "gelu", "model.norm": "layernorm", "train.global_batch_size": 64}
    assert {key: run[key] for key in old_recipe} == old_recipe


def test_a_study_resumes_its_runs_and_keeps_what_it_cannot_resume(tmp_path, monkeypatch):
    args = protocol(tmp_path, steps=4)
    run = ablation.run_dir(args, "64", "sdt", 0)
    overrides = ablation.run_overrides(args, ROPE, "64", "sdt", 0)
    trained = []

    def fake_train(config):
        trained.append((config, run.exists()))

    monkeypatch.setattr("sdtgen.training.trainer.train", fake_train)

    # Killed after its checkpoint at step 2: resumed from it, its folder kept.
    checkpoint = run / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    save_config(load_config(None, overrides), run / "config.yaml")
    ablation.train_run(args, ROPE, "64", "sdt", 0)
    config, kept = trained.pop()
    assert kept and config.train.resume == "latest" and config.output_dir == str(run)

    # Killed before its first checkpoint: trained anew, in an emptied folder.
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    (checkpoint / "trainer_state.json").unlink()
    ablation.train_run(args, ROPE, "64", "sdt", 0)
    assert trained.pop()[1] is False

    # Finished: found and skipped; with other settings asked, neither counted nor overwritten.
    run.mkdir(parents=True)
    save_config(load_config(None, overrides), run / "config.yaml")
    (run / "log.jsonl").write_text(json.dumps({"step": 4, "eval_fid": 50.0, "eval_class_accuracy": 0.5}) + "\n")
    assert ablation.done(args, ROPE, "64", "sdt", 0) and ablation.finished_runs(args, ROPE, "64") == [("sdt", 0)]
    other = protocol(tmp_path, steps=4, eval_samples=1000)
    assert not ablation.done(other, ROPE, "64", "sdt", 0) and ablation.finished_runs(other, ROPE, "64") == []
    with pytest.raises(ValueError, match="trained with other settings .*train.eval_samples: 500, asked 1000"):
        ablation.train_run(other, ROPE, "64", "sdt", 0)
    assert not trained and (run / "log.jsonl").is_file()


def test_a_recorded_run_counts_without_its_folder(tmp_path, monkeypatch):
    # A fresh clone holds the published results.json and no run folders: a run it records with the config asked for
    # now counts as finished; one recorded with another protocol, another default or no config does not.
    args = protocol(tmp_path, steps=4)

    def entry(seed, config):
        return {"grid": "64", "variant": "sdt", "seed": seed, "overrides": [], "config": config}

    asked = ablation.flat_config(None, ablation.run_overrides(args, ROPE, "64", "sdt", 3))
    other_protocol = ablation.flat_config(
        None, ablation.run_overrides(protocol(tmp_path, steps=8), ROPE, "64", "sdt", 4)
    )
    kept = entry(3, asked)
    no_config = {key: value for key, value in entry(5, asked).items() if key != "config"}
    previous = {"runs": [kept, entry(4, other_protocol), {**kept, "grid": "256"}, no_config]}
    assert ablation.recorded_runs(args, ROPE, "64", previous) == {("sdt", 3): kept}
    assert not ablation.run_dir(args, "64", "sdt", 3).exists()
    # The same overrides on a changed default config: trained anew.
    monkeypatch.setattr(ablation, "flat_config", lambda path, overrides=(): {**asked, "train.lr": 1.0})
    assert ablation.recorded_runs(args, ROPE, "64", previous) == {}


def test_a_pinned_study_keeps_its_published_runs_when_the_defaults_move():
    # rope-lr2e-3 is the rope study on the defaults it trained with (lr 2e-3, guidance 3), pinned in its recipe:
    # every run its published results hold still counts as finished, at both grids, under today's defaults.
    study = STUDIES["rope-lr2e-3"]
    results = json.loads((REPO / study.published / "results.json").read_text())
    assert results["study"] == study.name and study.recipe
    for grid, measured in results["grids"].items():
        p = measured["protocol"]
        args = protocol(study.out, p["steps"], p["eval_every"], p["eval_samples"], p["eval_steps"])
        runs = {(r["variant"], r["seed"]) for r in results["runs"] if r["grid"] == grid}
        assert set(ablation.recorded_runs(args, study, grid, results)) == runs
        # The same runs asked of the current study: trained anew, as the defaults they trained with are gone.
        assert ablation.recorded_runs(args, ROPE, grid, results) == {}
    assert sum(r["grid"] == "64" for r in results["runs"]) == 15


@pytest.mark.slow
def test_the_rope_study_end_to_end(tmp_path, tmp_path_factory):
    # The current study shrunk as docs/ablation.md's 2023 one is in tests/test_docs.py: 2 steps a run, 3 variants
    # x 2 seeds, 20 samples of one sampler step, one cost round; then its report from the results file alone.
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = scratch_env(tmp_path)
    env["SDTGEN_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "sdtgen-cache")
    link_repo_folders(cwd, "scripts", "cache/animals-latents")
    study = (
        "python scripts/ablation.py --steps 2 --eval-every 1 --eval-samples 20 --eval-steps 1 --seeds 0 1"
        " --variants fixed sdt sdt-norope --spread-seeds 2 --noise-levels 0.5 --cost-repeats 1"
    )
    run(study, cwd, env)
    out = cwd / "runs" / "ablation-rope"
    results = json.loads((out / "results.json").read_text())
    assert results["study"] == "rope"
    runs = {(r["variant"], r["seed"]): r for r in results["runs"]}
    assert set(runs) == {(v, s) for v in ("fixed", "sdt", "sdt-norope") for s in (0, 1)}
    asked = protocol("runs/ablation-rope", steps=2, eval_every=1, eval_samples=20, eval_steps=1)
    for (variant, seed), entry in runs.items():
        assert entry["overrides"] == ablation.run_settings(asked, ROPE, "64", variant, seed)
        assert [p["step"] for p in entry["curve"]] == [1, 2]
    assert "model.rope=false" in runs["sdt-norope", 0]["overrides"] and "model.rope=true" in runs["sdt", 0]["overrides"]
    grid = results["grids"]["64"]
    assert grid["paired"]["fid"]["sdt-norope"]["sdt"]["n"] == 2 and grid["paired"]["fid"]["fixed"]["sdt"]["n"] == 2
    assert grid["protocol"]["batch"] == 16 and grid["protocol"]["steps"] == 2
    assert set(grid["eval_spread"]["runs"]) == {"fixed-seed0", "sdt-seed0"}
    assert set(grid["content"]) == {f"{v}-seed{s}" for v in ("sdt", "sdt-norope") for s in (0, 1)}
    assert set(results["cost"]["64"]["x_vanilla"]) == set(ROPE.variants)

    # Run again with seed 0's folders gone, as in a fresh clone: every run is found finished (seed 0 in
    # results.json), nothing trains, and the results are the same.
    for folder in out.glob("tokens64/*-seed0"):
        shutil.rmtree(folder)
    logs = {path: path.stat().st_mtime_ns for path in out.glob("tokens64/*/log.jsonl")}
    run(study, cwd, env)
    assert {path: path.stat().st_mtime_ns for path in logs} == logs and not list(out.glob("tokens64/*-seed0"))
    assert json.loads((out / "results.json").read_text()) == results

    # Timing the steps again keeps every run and measurement of the grid; only its cost is new.
    run("python scripts/ablation.py --cost-only --cost-repeats 1", cwd, env)
    timed = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in timed.items() if k != "cost"} == {k: v for k, v in results.items() if k != "cost"}
    assert timed["cost"]["64"]["step_ms"] != results["cost"]["64"]["step_ms"]

    report = run("python scripts/ablation.py --report-only --publish docs/ablation-rope", cwd, env).stdout
    assert "| sdt - sdt-norope | FID |" in report and "| sdt - fixed | FID |" in report  # the gaps at steps 1, 2
    assert "FID - sdt-norope" in report and "The evaluation's own spread" in report and "Content dependence" in report
    published = cwd / "docs" / "ablation-rope"
    assert {p.name for p in published.iterdir()} == {"results.json", *ablation.FILES}
    assert (published / "results.md").read_text() + "\n" == report
    assert (published / "results.json").read_bytes() == (out / "results.json").read_bytes()
