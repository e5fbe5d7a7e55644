"""scripts/sampler_curve.py on tiny random runs: the NFE of every point counted by a wrapper of the model's forward,
targets turned into steps, points shared between the parts measured once, an interrupted run resumed, the outputs.

Scoring is replaced by a stand-in (the real one, tests/test_eval.py's subject, takes ~10 s a call here for its
precision/recall against 9,000 reference images); tests/test_docs.py runs the script's docs command unchanged.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from sdtgen.diffusion.sampling import DEFAULT_SAMPLER, SAMPLERS, Guidance, denoise, make_scheduler
from sdtgen.evaluation import (
    evaluate,  # noqa: F401  first: it binds the real compute_metrics, never a patch
    metrics,
)
from sdtgen.models.dit import SDTDiT
from tiny_runs import REPO, random_model, write_run

SCRIPT = REPO / "scripts" / "sampler_curve.py"
sys.path.insert(0, str(SCRIPT.parent))  # where the script imports its sibling modules from


def load_script():
    spec = importlib.util.spec_from_file_location("sampler_curve", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def closed_form_nfe(sampler: str, steps: int) -> int:
    """Heun evaluates twice per step but the last (an Euler step); the others once per step."""
    return 2 * steps - 1 if sampler == "heun" else steps


def expected_steps(sampler: str, targets: list[int]) -> set[int]:
    """Brute force: for each target, the largest steps whose closed-form NFE fits."""
    return {max(s for s in range(1, target + 1) if closed_form_nfe(sampler, s) <= target) for target in targets}


class Interrupt(Exception):
    pass


@pytest.fixture
def model_calls(monkeypatch) -> list[int]:
    """One entry per call of any SDTDiT: an evaluation of the whole batch (a guided step: one doubled batch)."""
    calls = []
    forward = SDTDiT.forward

    def counting_forward(self, *args, **kwargs):
        calls.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(SDTDiT, "forward", counting_forward)
    return calls


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
def test_nfe_is_what_denoise_evaluates(objective, model_calls):
    curve = load_script()
    model = random_model(objective, input_size=8)
    for sampler in SAMPLERS[objective]:
        scheduler = make_scheduler(objective, sampler, model.config.learn_sigma)
        for steps in (1, 2, 3, 5):
            for scale in (1.0, 2.0):
                model_calls.clear()
                denoise(model, scheduler, torch.tensor([0, 1]), steps=steps, guidance=Guidance(scale))
                nfe = curve.model_evaluations(make_scheduler(objective, sampler, False), steps)
                assert len(model_calls) == nfe == closed_form_nfe(sampler, steps), (sampler, steps, scale)
        targets = [1, 3, 4, 6, 25]
        chosen = curve.steps_for_targets(scheduler, targets)
        assert [s for s, _ in chosen] == sorted(expected_steps(sampler, targets))
        assert all(nfe == closed_form_nfe(sampler, s) for s, nfe in chosen)


def test_points_shared_between_parts_resume_and_outputs(tmp_path, monkeypatch, model_calls):
    curve = load_script()
    # sample.steps=3; guidance 2 at every step, so the guidance part's scale 2 is a point of the nfe part
    run = write_run(
        tmp_path / "run",
        random_model("flow", input_size=16),
        objective="flow",
        overrides=("sample.guidance_scale=2", "sample.guidance_interval=[0,1]"),
    )
    out = tmp_path / "curve"
    argv = ["--ckpt", str(run), "--num-samples", "20", "--batch-size", "20", "--guidance-scales", "1", "2"]
    argv += ["--out", str(out)]
    monkeypatch.setattr(
        metrics,
        "compute_metrics",
        lambda images, labels, reference, fid_and_accuracy_only: (
            {"fid": float(images.mean()), "class_accuracy": 0.5, "class_accuracy_per_class": {}}
        ),
    )
    measured = []  # (sampler, steps, guidance scale, model calls) of each point measured; one batch a point
    measure = curve.measure

    def counted(pipe, spec, batch_size, stop_after=None):
        if stop_after is not None and len(measured) == stop_after:
            raise Interrupt
        before = len(model_calls)
        point = measure(pipe, spec, batch_size)
        measured.append((spec["sampler"], spec["steps"], spec["guidance_scale"], len(model_calls) - before))
        return point

    # Interrupted after two points: the JSON keeps both.
    monkeypatch.setattr(curve, "measure", lambda *a: counted(*a, stop_after=2))
    with pytest.raises(Interrupt):
        curve.main([*argv, "--nfe", "3", "4"])
    assert len(json.loads((out / "sampler_curve.json").read_text())["points"]) == 2

    # Resumed: the rest. Targets 3 and 4 give Heun 2 steps once; the guidance part's scale 2 at the run's
    # sampler and steps (the flow default, 3 steps) is the nfe part's point at the run's sample.guidance_scale, 2.
    monkeypatch.setattr(curve, "measure", counted)
    assert curve.main([*argv, "--nfe", "3", "4"]) == 0
    points = json.loads((out / "sampler_curve.json").read_text())["points"]
    assert len(measured) == len(points) == len({(s, k, c) for s, k, c, _ in measured})
    for sampler in SAMPLERS["flow"]:
        chosen = {p["steps"] for p in points if p["sampler"] == sampler and p["guidance_scale"] == 2.0}
        assert chosen == expected_steps(sampler, [3, 4])
    run_sampler = [p for p in points if p["guidance_scale"] == 1.0][0]["sampler"]
    assert run_sampler == DEFAULT_SAMPLER["flow"]
    assert sorted((p["steps"], p["guidance_scale"]) for p in points if p["sampler"] == run_sampler) == [
        (3, 1.0),
        (3, 2.0),
        (4, 2.0),
    ]
    by_point = {(s, k, c): n for s, k, c, n in measured}
    for p in points:
        key = (p["sampler"], p["steps"], p["guidance_scale"])
        assert p["nfe"] == by_point[key] == closed_form_nfe(p["sampler"], p["steps"])
        assert p["num_samples"] == 20 and p["seed"] == 0 and p["seconds"] >= p["sampling_seconds"] >= 0

    # Run again with one more target: only its new point is sampled.
    measured.clear()
    assert curve.main([*argv, "--nfe", "3", "4", "6", "--samplers", "heun"]) == 0
    assert measured == [("heun", 3, 2.0, 5)]

    # A JSON of before the rename, which called the guidance scale cfg, still holds its points.
    saved = out / "sampler_curve.json"
    saved.write_text(saved.read_text().replace('"guidance_scale"', '"cfg"'))
    measured.clear()
    assert curve.main([*argv, "--nfe", "3", "4", "6", "--samplers", "heun"]) == 0
    assert measured == []

    for name in ("sampler_curve.json", "sampler_curve.md", "sampler_curve.png", "guidance_curve.png"):
        assert (out / name).stat().st_size > 0, name
    table = (out / "sampler_curve.md").read_text()
    assert "| heun | 3 | 2 |" in table and "| heun | 5 | 3 |" in table  # sampler, NFE, steps
    assert "| euler |" not in table  # the table shows this invocation's plan
    assert "| 1 |" in table and "| 2 |" in table  # the guidance scales


def test_bad_requests_are_one_line_errors(tmp_path, capsys):
    curve = load_script()
    run = write_run(tmp_path / "run", random_model("flow", input_size=16), objective="flow")
    for argv, message in (
        (["--samplers", "ddim"], "The sampler ddim does not fit this flow model; choose from euler"),
        (["--nfe", "0"], "--nfe and --guidance-steps must be at least 1"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            curve.main(["--ckpt", str(run), "--out", str(tmp_path / "out"), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
