"""The trainer: exact resume, atomic checkpoints, process-count and accumulation invariance, EMA."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file

from doc_commands import two_cpu_processes
from sdtgen import SDTDiT
from sdtgen.config import load_config
from sdtgen.data.animals import ANIMAL_CLASSES
from sdtgen.evaluation.evaluate import LOW_CLASS_ACCURACY
from sdtgen.training import checkpoint as ckpt
from sdtgen.training.ema import EMA, power_exponent
from sdtgen.training.randomness import EpochOrder, StepKeys, step_keys
from sdtgen.training.trainer import learning_rate, train

ROOT = Path(__file__).resolve().parents[1]
# Pixel space on the built-in set, a 2-block model: a step takes milliseconds.
TINY = [
    "data.vae=identity",
    "data.latent_cache=null",
    "model.preset=S/4",
    "model.depth=2",
    "model.hidden_size=64",
    "model.num_heads=2",
    "train.global_batch_size=8",
    "train.log_every=1",
    "sample.per_class=1",
    "sample.steps=2",
    "train.ema_warmup=true",
    "objective=ddpm",
    "train.final_eval=false",
    "train.mixed_precision=no",
]


def run(tmp: Path, *overrides: str) -> Path:
    # Accelerate keeps one process-wide state whose precision cannot change; these runs switch it.
    AcceleratorState._reset_state(reset_partial_state=True)
    return train(load_config(None, [f"output_dir={tmp}", *TINY, *overrides]))


def losses(run_dir: Path) -> list[dict]:
    keys = ("step", "loss", "mse", "vb", "grad_norm")
    return [{k: r[k] for k in keys} for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())]


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    folder = run_dir / "checkpoints" / f"checkpoint-{step}"
    return {
        **load_file(folder / "training_model.safetensors"),
        **{f"ema.{k}": v for k, v in load_file(folder / "model" / "diffusion_pytorch_model.safetensors").items()},
    }


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def test_resume_is_exact(tmp_path):
    straight = run(tmp_path / "straight", "train.max_steps=6", "train.checkpoint_every=3")
    interrupted = run(tmp_path / "resumed", "train.max_steps=3", "train.checkpoint_every=3")
    # Older versions also saved torch's global RNG states; resume ignores them, and saves none.
    save_file({"cpu": torch.get_rng_state()}, interrupted / "checkpoints" / "checkpoint-3" / "rng.safetensors")
    resumed = run(interrupted, "train.max_steps=6", "train.checkpoint_every=3", "train.resume=latest")
    assert not (resumed / "checkpoints" / "checkpoint-6" / "rng.safetensors").exists()
    assert [r["step"] for r in losses(resumed)] == [1, 2, 3, 4, 5, 6]
    assert losses(resumed) == losses(straight)
    assert_same_weights(final_weights(resumed, 6), final_weights(straight, 6))


def test_the_run_that_builds_the_latent_cache_trains_the_same_model_as_runs_that_reuse_it(tmp_path):
    # Extraction draws from the global generator (its DataLoader does); initialisation must not
    # see that. Builds with two batch sizes, then reuses: one model, bit for bit.
    cache = [f"data.latent_cache={tmp_path / 'cache'}", "train.max_steps=2", "train.checkpoint_every=2"]
    builds = run(tmp_path / "builds", *cache, "data.extract_batch_size=1000")
    reuses = run(tmp_path / "reuses", *cache)
    rebuilt = run(
        tmp_path / "rebuilt",
        f"data.latent_cache={tmp_path / 'cache2'}",
        "train.max_steps=2",
        "train.checkpoint_every=2",
        "data.extract_batch_size=333",
    )
    assert (tmp_path / "cache" / "manifest.json").is_file()
    assert losses(builds) == losses(reuses) == losses(rebuilt)
    assert_same_weights(final_weights(builds, 2), final_weights(reuses, 2))
    assert_same_weights(final_weights(builds, 2), final_weights(rebuilt, 2))


def test_resume_is_exact_in_bf16(tmp_path):
    bf16 = ("train.mixed_precision=bf16", "train.checkpoint_every=2")
    straight = run(tmp_path / "straight", "train.max_steps=4", *bf16)
    resumed = run(
        run(tmp_path / "resumed", "train.max_steps=2", *bf16), "train.max_steps=4", *bf16, "train.resume=latest"
    )
    assert losses(resumed) == losses(straight)
    assert_same_weights(final_weights(resumed, 4), final_weights(straight, 4))
    assert load_config(tmp_path / "straight" / "config.yaml").train.mixed_precision == "bf16"


def test_bf16_accumulation_matches_to_bf16_rounding(tmp_path):
    # Splitting the batch changes bf16 rounding inside the kernels, so bf16 runs agree with
    # each other to bf16 precision, not bit for bit (docs/training_on_your_data.md).
    whole = run(tmp_path / "whole", "train.max_steps=3", "train.checkpoint_every=3", "train.mixed_precision=bf16")
    accumulated = run(
        tmp_path / "accum",
        "train.max_steps=3",
        "train.checkpoint_every=3",
        "train.mixed_precision=bf16",
        "train.micro_batch_size=2",
    )
    for a, b in zip(losses(whole), losses(accumulated)):
        assert a["loss"] == pytest.approx(b["loss"], rel=2e-2)


def test_auto_precision_is_resolved_and_recorded_and_the_given_config_kept(tmp_path):
    from sdtgen.training.precision import cpu_has_fast_bf16

    AcceleratorState._reset_state(reset_partial_state=True)
    given = load_config(None, [f"output_dir={tmp_path}", *TINY, "train.max_steps=1", "train.mixed_precision=auto"])
    run_dir = train(given)
    recorded = load_config(run_dir / "config.yaml").train.mixed_precision
    assert recorded == ("bf16" if cpu_has_fast_bf16() else "no")
    assert given.train.mixed_precision == "auto"  # the trainer resolves a copy


def test_a_failed_save_leaves_nothing_that_resume_would_pick(tmp_path, monkeypatch):
    run_dir = run(tmp_path, "train.max_steps=2", "train.checkpoint_every=1", "train.keep_checkpoints=5")
    assert ckpt.resolve_resume("latest", run_dir / "checkpoints").name == "checkpoint-2"

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    model = SDTDiT.from_pretrained(run_dir / "checkpoints" / "checkpoint-2" / "model")
    with pytest.raises(OSError, match="No space left"):
        ckpt.save_checkpoint(
            run_dir / "checkpoints",
            3,
            ema_model=model,
            training_model=model,
            optimizer=torch.optim.AdamW(model.parameters()),
            scaler=None,
            trainer_state={"step": 3},
            keep=5,
        )
    assert (run_dir / "checkpoints" / ".tmp-checkpoint-3").exists()  # the partial save, under a name resume ignores
    assert ckpt.resolve_resume("latest", run_dir / "checkpoints").name == "checkpoint-2"
    assert [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")] == ["checkpoint-1", "checkpoint-2"]


def test_checkpoints_keep_the_newest_k_and_load_as_models(tmp_path):
    run_dir = run(
        tmp_path, "train.max_steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=2", "objective=flow"
    )
    assert [p.name for p in ckpt.list_checkpoints(run_dir / "checkpoints")] == ["checkpoint-3", "checkpoint-4"]
    model = SDTDiT.from_pretrained(run_dir / "checkpoints" / "checkpoint-4" / "model")
    assert model.config.attention == "sdt" and model.config.num_classes == 10
    assert (run_dir / "config.yaml").is_file() and (run_dir / "loss.png").is_file()
    assert list((run_dir / "samples").glob("grid-*.png"))


def test_gradient_accumulation_gives_the_same_update(tmp_path):
    whole = run(tmp_path / "whole", "train.max_steps=3", "train.checkpoint_every=3")
    accumulated = run(tmp_path / "accum", "train.max_steps=3", "train.checkpoint_every=3", "train.micro_batch_size=2")
    for a, b in zip(losses(whole), losses(accumulated)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert_same_weights(final_weights(whole, 3), final_weights(accumulated, 3), atol=1e-6)


@pytest.mark.slow
def test_two_processes_compute_the_update_of_one(tmp_path):
    single = run(tmp_path / "one", "train.max_steps=3", "train.checkpoint_every=3")
    launch, env = two_cpu_processes()
    command = [
        *launch,
        str(ROOT / "scripts" / "train_gen.py"),
        f"output_dir={tmp_path / 'two'}",
        *TINY,
        "train.max_steps=3",
        "train.checkpoint_every=3",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "two" / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    for a, b in zip(losses(single), losses(tmp_path / "two")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert_same_weights(final_weights(single, 3), final_weights(tmp_path / "two", 3), atol=1e-5)


def test_data_loader_workers_change_nothing(tmp_path):
    # The batch sampler runs ahead of the loop by the workers' prefetch; the loop draws each
    # step's other random numbers itself, so both must still meet at the same step.
    inline = run(tmp_path / "inline", "train.max_steps=3", "train.checkpoint_every=3")
    workers = run(tmp_path / "workers", "train.max_steps=3", "train.checkpoint_every=3", "data.num_workers=2")
    assert losses(workers) == losses(inline)
    assert_same_weights(final_weights(workers, 3), final_weights(inline, 3))


def test_tensorboard_events_hold_the_logged_losses(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = run(tmp_path, "train.max_steps=3", "train.checkpoint_every=3")
    (events,) = run_dir.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    logged = [(r["step"], r["loss"]) for r in losses(run_dir)]
    written = [(event.step, event.value) for event in accumulator.Scalars("train/loss")]
    assert [step for step, _ in written] == [step for step, _ in logged] == [1, 2, 3]
    for (_, value), (_, loss) in zip(written, logged):
        assert value == pytest.approx(loss, rel=1e-6)  # TensorBoard stores float32


def test_ema_update_and_warmup():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    start = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=100)
    torch.testing.assert_close(ema.model.weight, 0.9 * start + 0.1 * model.weight)
    warm = EMA(model, decay=0.9999, warmup=True)
    assert (
        warm.decay_at(0) == pytest.approx(0.1)
        and warm.decay_at(90) == pytest.approx(0.91)
        and warm.decay_at(10**7) == 0.9999
    )
    assert EMA(model.to(torch.bfloat16)).model.weight.dtype == torch.float32


@pytest.mark.parametrize("std", [0.05, 0.1, 0.2])
def test_power_exponent_has_the_stated_relative_std(std):
    """Independent check: the std of the density (g + 1) t^g on [0, 1], integrated numerically."""
    exponent = power_exponent(std)
    t = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    density = (exponent + 1) * t**exponent
    mean = torch.trapezoid(t * density, t)
    variance = torch.trapezoid((t - mean) ** 2 * density, t)
    assert variance.sqrt().item() == pytest.approx(std, rel=1e-4)
    assert power_exponent(0.1) == pytest.approx(6.9372, abs=1e-4)  # pinned (EDM2 tabulates 6.94)


def test_power_ema_weighs_step_s_by_the_discrete_power_profile():
    """After T updates the average is sum_s w_s (s^(g+1) - (s-1)^(g+1)) / T^(g+1), s = 1..T."""
    model = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(model, std=0.1)
    exponent, steps = ema.exponent, 50
    values = torch.randn(steps, dtype=torch.float64)
    for step, value in enumerate(values):
        model.weight.data.fill_(float(value))
        ema.update(model, step)
    s = torch.arange(1, steps + 1, dtype=torch.float64)
    weights = (s ** (exponent + 1) - (s - 1) ** (exponent + 1)) / steps ** (exponent + 1)
    assert ema.model.weight.item() == pytest.approx((weights * values).sum().item(), rel=1e-5)
    with pytest.raises(ValueError, match="relative std"):
        EMA(model, std=0.3)
    with pytest.raises(ValueError, match="train.ema_std must be in"):
        load_config(None, ["train.ema_std=0.5"])


@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_learning_rate_schedules(schedule):
    config = load_config(
        None, ["train.lr=0.01", "train.warmup_steps=10", "train.max_steps=110", f"train.lr_schedule={schedule}"]
    )
    rates = [learning_rate(config, step) for step in range(110)]
    assert rates[:10] == pytest.approx([0.001 * (s + 1) for s in range(10)])  # linear warm-up to 0.01
    assert rates[10] == pytest.approx(0.01)
    decayed = {  # a quarter of the decay phase in: step 35 of 10..110
        "constant": 0.01,
        "cosine": 0.01 * 0.5 * (1 + 2**-0.5),
        "linear": 0.0075,
    }[schedule]
    assert rates[35] == pytest.approx(decayed)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:])) and rates[-1] > 0
    if schedule != "constant":
        assert rates[-1] <= 0.01 * 0.01 + 1e-12  # next to nothing on the last step


def test_epoch_order_visits_every_sample_once_per_epoch():
    order = EpochOrder(num_samples=10, global_batch_size=4, seed=3)
    stream = torch.cat([order.indices(s) for s in range(5)])  # 20 samples = 2 epochs
    assert sorted(stream[:10].tolist()) == list(range(10)) and sorted(stream[10:].tolist()) == list(range(10))
    assert not torch.equal(stream[:10], stream[10:])
    assert torch.equal(EpochOrder(10, 4, 3).indices(3), order.indices(3))  # a pure function of the step


def test_step_keys_are_a_function_of_the_step_split_over_processes():
    order = EpochOrder(num_samples=10, global_batch_size=4, seed=3)
    whole = step_keys(order, 5, slice(0, 4), "cpu")
    assert [index for index, _ in whole] == order.indices(5).tolist()
    assert step_keys(order, 5, slice(0, 2), "cpu") + step_keys(order, 5, slice(2, 4), "cpu") == whole
    assert list(StepKeys(order, 4, 6, slice(0, 4), "cpu")) == [step_keys(order, 4, slice(0, 4), "cpu"), whole]


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match=r"Unknown config key 'train.max_step'.*train.max_steps"):
        load_config(None, ["train.max_step=3"])
    with pytest.raises(ValueError, match="not of the form key=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(ValueError, match="objective must be"):
        load_config(None, ["objective=edm"])
    with pytest.raises(FileNotFoundError, match="configs/"):
        load_config("configs/nope.yaml")


def test_evaluation_during_training_is_logged_and_leaves_the_weights_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SDTGEN_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = run(
        tmp_path / "run",
        "train.max_steps=4",
        "train.checkpoint_every=4",
        "train.log_every=3",
        "train.eval_every=2",
        "train.eval_samples=20",
        "train.final_eval=true",
    )
    records = {r["step"]: r for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines())}
    assert sorted(records) == [2, 3, 4]  # log_every=3, plus the evaluated steps
    for step in (2, 4):
        assert (
            records[step]["eval_samples"] == 20
            and records[step]["eval_fid"] > 0
            and 0 <= records[step]["eval_class_accuracy"] <= 1
        )
        assert "loss" in records[step]
        per_class = records[step]["eval_class_accuracy_per_class"]
        assert list(per_class) == list(ANIMAL_CLASSES) and set(per_class.values()) <= {0.0, 0.5, 1.0}  # 2 each
        assert sum(per_class.values()) / 10 == pytest.approx(records[step]["eval_class_accuracy"], abs=1e-4)
    printed = capsys.readouterr().out.splitlines()
    (fid_line,) = [i for i, line in enumerate(printed) if line.startswith("Step 4: FID")]
    shown = " · ".join(
        f"{name} {accuracy:.0%}" + " !" * (accuracy < LOW_CLASS_ACCURACY) for name, accuracy in per_class.items()
    )
    assert printed[fid_line + 1] == f"Class accuracy per class: {shown}"
    low = min(per_class.values()) < LOW_CLASS_ACCURACY
    assert printed[fid_line + 2].startswith("! = below 85%" if low else "Every class")
    # TensorBoard gets one scalar per class, next to the others in the run's one events file.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = run_dir.rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events.parent))
    accumulator.Reload()
    bear = accumulator.Scalars("train/eval_class_accuracy_per_class/bear")
    assert [(e.step, e.value) for e in bear] == [
        (s, records[s]["eval_class_accuracy_per_class"]["bear"]) for s in (2, 4)
    ]
    # Evaluating draws its own samples: the weights are those of the same run without it.
    plain = run(tmp_path / "plain", "train.max_steps=4", "train.checkpoint_every=4", "train.final_eval=false")
    assert_same_weights(final_weights(run_dir, 4), final_weights(plain, 4))
