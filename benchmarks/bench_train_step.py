"""Where one training step of a run goes: the trainer's whole step, and its fixed per-step parts alone.

Builds the trainer of a config (the default: the main job's) in a temporary run folder, then
times, round-robin over `--rounds` rounds after a warm-up, each a median over `--steps` calls:

- the whole step (`Trainer.train_step`: the batch's latents, forward, backward, gradient
  clipping, AdamW, EMA), on the run's real batches;
- its parts whose cost does not depend on the batch size: clipping, AdamW's step with the
  implementation the trainer uses (torch's default, a loop over tensors on CPU) and with the
  `foreach` and `fused` ones, and the EMA update.

What is left of the whole step is the forward and backward, whose cost grows with the batch.
The parts are timed on copies of the model's parameters with gradients of ones; their ratio to
the whole step says how much a smaller batch pays per image for them.

    python benchmarks/bench_train_step.py                        # the main job's step
    python benchmarks/bench_train_step.py train.global_batch_size=64
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from bench_model import synchronize


def median_ms(fn: Callable[[], object], calls: int, device: torch.device) -> float:
    """The median wall time of `calls` calls of fn, in milliseconds (waiting for the device after each)."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="config overrides (key=value), as scripts/train_gen.py takes")
    parser.add_argument("--steps", type=int, default=20, help="calls per measurement (default: 20)")
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds; the table takes their median")
    args = parser.parse_args()

    from sdtgen.config import load_config
    from sdtgen.training.randomness import StepKeys
    from sdtgen.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        config = load_config(None, [*args.overrides, f"output_dir={out}", "train.eval_every=1000000000"])
        trainer = Trainer(config)
        keys = StepKeys(trainer.order, 0, config.train.max_steps, trainer.positions, trainer.device)
        batches = iter(trainer.data.loader(keys, num_workers=0))
        step = 0

        def whole_step() -> None:
            nonlocal step
            trainer.train_step(step, next(batches), trainer._randomness(step))
            step += 1

        model = trainer.accelerator.unwrap_model(trainer.model)
        params = [p for p in model.parameters() if p.requires_grad]
        # Copies of the parameters with gradients of ones, which the whole step does not clear: the
        # fixed parts clip and step them, not the weights that train on.
        copies = [p.detach().clone().requires_grad_(True) for p in params]
        for c in copies:
            c.grad = torch.ones_like(c)
        hyper = {"lr": config.train.lr, "betas": tuple(config.train.betas), "weight_decay": config.train.weight_decay}
        adamw = {
            kind: torch.optim.AdamW(copies, **hyper, **flag)
            for kind, flag in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))
        }
        parts = {
            "whole step": whole_step,
            "gradient clipping": lambda: torch.nn.utils.clip_grad_norm_(copies, 1.0),
            "AdamW step (default, as trained)": adamw["default"].step,
            "AdamW step, foreach": adamw["foreach"].step,
            "AdamW step, fused": adamw["fused"].step,
            "EMA update": lambda: trainer.ema.update(model, 100),
        }
        for fn in parts.values():  # warm-up
            fn()
        rounds = {name: [] for name in parts}
        for _ in range(args.rounds):
            for name, fn in parts.items():
                rounds[name].append(median_ms(fn, args.steps, trainer.device))
        ms = {name: statistics.median(values) for name, values in rounds.items()}

    batch = config.train.global_batch_size
    print(
        f"{config.model.preset}, batch {batch}, {trainer.accelerator.mixed_precision}, {torch.get_num_threads()} threads, "
        f"{sum(p.numel() for p in params):,} parameters in {len(params)} tensors"
    )
    print("| part | ms | share of the step |\n|---|---:|---:|")
    for name, value in ms.items():
        print(f"| {name} | {value:.2f} | {value / ms['whole step']:.1%} |")


if __name__ == "__main__":
    main()
