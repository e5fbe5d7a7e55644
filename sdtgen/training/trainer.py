"""The training loop: Accelerate, AdamW, EMA, atomic checkpoints and exact resume.

One optimizer step consumes `train.global_batch_size` samples whatever the number of
processes: each process takes its share of the global batch (training/randomness.py) and, if
`train.micro_batch_size` is smaller, accumulates gradients over micro-batches. DDP averages
the shares' gradients, so N processes compute the update of one process with the same
global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from tqdm.auto import tqdm

from sdtgen.config import RunConfig, TrainConfig, config_to_dict, save_config
from sdtgen.diffusion import make_objective
from sdtgen.distributed import process_state
from sdtgen.models.dit import SDTDiT
from sdtgen.runs import (
    CHECKPOINTS_DIR,
    CLASS_NAMES_FILE,
    CONFIG_FILE,
    LOG_FILE,
    TRAINER_STATE_FILE,
    checkpoint_name,
    read_log,
)
from sdtgen.training import checkpoint as ckpt
from sdtgen.training.data import prepare_training_data
from sdtgen.training.ema import EMA
from sdtgen.training.precision import resolve_mixed_precision
from sdtgen.training.randomness import EpochOrder, StepKeys, StepRandomness, draw_step_randomness, init_seed
from sdtgen.training.reporting import save_loss_plot, save_sample_grid
from sdtgen.training.representation import dispersive_loss, load_encoder, repa_loss
from sdtgen.training.run_lock import hold_run_folder

LOSS_PLOT = "loss.png"  # the last file a run writes (after its final grid)


def resolve_config(config: RunConfig, device: torch.device) -> RunConfig:
    """The config a run on `device` trains with, and records in config.yaml and its checkpoints:
    `config` with `train.mixed_precision=auto` resolved (training/precision.py). `config` is left as given."""
    precision = resolve_mixed_precision(config.train.mixed_precision, device)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, mixed_precision=precision))


def split_global_batch(train: TrainConfig, num_processes: int, rank: int) -> tuple[int, slice, int]:
    """(share, positions, micro): the samples per process, where process `rank`'s share sits in the
    global batch, and the micro-batch it accumulates gradients over."""
    if train.global_batch_size % num_processes:
        raise ValueError(
            f"train.global_batch_size={train.global_batch_size} must divide evenly over {num_processes} processes; "
            f"use a multiple of {num_processes}."
        )
    share = train.global_batch_size // num_processes
    micro = train.micro_batch_size or share
    if share % micro:
        raise ValueError(f"Each process's share ({share}) must be a multiple of train.micro_batch_size={micro}.")
    return share, slice(rank * share, (rank + 1) * share), micro


def build_model(
    config: RunConfig, num_classes: int, latent_shape: tuple[int, int, int], projector_dim: int = 0
) -> SDTDiT:
    """A new SDTDiT from the preset and overrides, or the `model.pretrained` folder.

    `projector_dim` > 0 gives a new model REPA's projector to that width.
    """
    m = config.model
    if m.pretrained:
        if not (Path(m.pretrained) / "config.json").is_file():
            raise FileNotFoundError(
                f"model.pretrained={m.pretrained} is not an SDTDiT folder (no config.json in it); pass a checkpoint's "
                "model/ folder or the output of `sdtgen convert`."
            )
        model = SDTDiT.from_pretrained(m.pretrained)
        ckpt.check_finite_weights(model.state_dict(), m.pretrained)
        if (model.config.in_channels, model.config.input_size) != (latent_shape[0], latent_shape[1]):
            raise ValueError(
                f"model.pretrained={m.pretrained} takes {model.config.in_channels}x{model.config.input_size}^2 inputs, "
                f"but the data gives latents of shape {latent_shape}."
            )
        if model.config.num_classes != num_classes:
            raise ValueError(f"model.pretrained has {model.config.num_classes} classes; the data has {num_classes}.")
        model.set_attention_backend(m.attention_backend)
    else:
        learn_sigma = (config.objective == "ddpm") if m.learn_sigma is None else m.learn_sigma
        overrides = {
            k: v
            for k, v in (("depth", m.depth), ("hidden_size", m.hidden_size), ("num_heads", m.num_heads))
            if v is not None
        }
        model = SDTDiT.from_preset(
            m.preset,
            attention=m.attention,
            attention_backend=m.attention_backend,
            input_size=latent_shape[1],
            in_channels=latent_shape[0],
            num_classes=num_classes,
            learn_sigma=learn_sigma,
            mlp_ratio=m.mlp_ratio,
            class_dropout_prob=m.class_dropout_prob,
            rope=m.rope,
            lepe=m.lepe,
            qk_norm=m.qk_norm,
            mlp=m.mlp,
            norm=m.norm,
            projector_dim=projector_dim,
            **overrides,
        )
    if m.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def build_objective(config: RunConfig, learn_sigma: bool):
    if config.objective == "ddpm":
        return make_objective("ddpm", learn_sigma=learn_sigma)
    f = config.flow
    return make_objective(
        "flow",
        time_sampling=f.time_sampling,
        logit_mean=f.logit_mean,
        logit_std=f.logit_std,
        direction_weight=f.direction_weight,
    )


def learning_rate(config: RunConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based); a pure function of the step, so resume is exact.

    A linear warm-up over `warmup_steps`, then `lr_schedule`: constant (DiT), or a cosine or
    linear decay from `lr` at the first step after warm-up towards 0 at `max_steps`. Short runs gain most from the decay: the
    last steps average out the gradient noise a constant rate keeps injecting.
    """
    train = config.train
    if train.warmup_steps > 0 and step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.lr_schedule == "constant":
        return train.lr
    progress = min(1.0, (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps))
    if train.lr_schedule == "cosine":
        return train.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return train.lr * (1.0 - progress)


class Trainer:
    """Owns one run folder; `Trainer(config).train()` runs or resumes it to train.max_steps.

    `self.config` is the resolved config (`resolve_config`); the `config` passed in is not changed.
    """

    def __init__(self, config: RunConfig) -> None:
        # The process: its device, precision and part of each global batch.
        # process_state() also stops a CPU launch whose processes did not join into one job.
        config = self.config = resolve_config(config, process_state().device)
        train = config.train
        self.accelerator = Accelerator(
            mixed_precision=train.mixed_precision, log_with=_tensorboard_if_installed(), project_dir=config.output_dir
        )
        self.device = self.accelerator.device
        self._configure_torch()
        set_seed(config.seed)  # for third-party code; sdtgen's own draws use training/randomness.py's streams
        self.out = Path(config.output_dir)
        self.checkpoints = self.out / CHECKPOINTS_DIR
        self.share, self.positions, self.micro = split_global_batch(
            train, self.accelerator.num_processes, self.accelerator.process_index
        )

        # The data, the model and what trains it.
        self.data, self.vae = prepare_training_data(config, self.accelerator)
        self.repa_encoder = load_encoder(train.repa_encoder).to(self.device) if train.repa_weight else None
        model = self._init_model()
        self.objective = build_objective(config, model.config.learn_sigma)
        if hasattr(self.objective, "to"):
            self.objective.to(self.device)
        model.to(self.device)
        self.ema = EMA(model, train.ema_decay, train.ema_warmup, train.ema_std)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)

        # Resume, then hand the model and optimizer to Accelerate.
        self.start_step, scaler_state = 0, None
        resume_from = ckpt.resolve_resume(train.resume, self.checkpoints)
        if resume_from is not None:
            self.start_step, scaler_state = self._restore(resume_from, model, optimizer)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if scaler_state is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(scaler_state)
        self.forward = torch.compile(self.model) if train.compile else self.model
        self.order = EpochOrder(len(self.data.dataset), train.global_batch_size, config.seed)

    def _configure_torch(self) -> None:
        """Refuse what this device cannot train, before the data is prepared; set its matmul precision and threads."""
        if self.config.model.attention_backend == "flex" and self.device.type == "cpu":
            raise ValueError(
                "model.attention_backend=flex cannot train on CPU (FlexAttention has no CPU backward in this torch); "
                "use auto or sdpa, or train on a GPU."
            )
        if self.device.type == "cuda" and self.config.train.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.device.type == "cpu":
            # `accelerate launch` pins OMP_NUM_THREADS=1, which halves a laptop's throughput;
            # share the cores among the processes instead.
            threads = self.config.train.cpu_threads
            torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // self.accelerator.num_processes))

    def _init_model(self) -> SDTDiT:
        """The model to train (with REPA's projector when REPA is on); sets `representation_depth`."""
        projector_dim = self._encoder_width() if self.repa_encoder is not None else 0
        # Initialise from a generator of the seed alone: extracting the latent cache first (or
        # not) draws from the global one, and the model must not depend on that.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(self.config.seed))
            model = build_model(self.config, len(self.data.class_names), self.data.latent_shape, projector_dim)
        if self.repa_encoder is not None and model.projector is None:
            raise ValueError("train.repa_weight > 0 needs a model with REPA's projector; model.pretrained has none.")
        self.representation_depth = self.config.train.representation_depth or max(1, model.config.depth // 3)
        if self.representation_depth > model.config.depth:
            raise ValueError(
                f"train.representation_depth={self.representation_depth} is deeper than the model ({model.config.depth} blocks)."
            )
        return model

    def _encoder_width(self) -> int:
        """The REPA encoder's feature width, read from one zero latent's decoded image."""
        latent = torch.zeros(1, *self.data.latent_shape, device=self.device)
        return self.repa_encoder(self.vae.decode(latent), (1, 1)).shape[-1]

    # ---------------------------------------------------------------- state
    def _restore(self, checkpoint: Path, model: SDTDiT, optimizer: torch.optim.Optimizer) -> tuple[int, dict | None]:
        """Load weights, EMA and optimizer of `checkpoint`; return (step, grad-scaler state)."""
        weights, ema_weights, optim, state = ckpt.load_training_state(checkpoint)
        try:
            model.load_state_dict(weights)
        except RuntimeError as error:  # torch lists every key: name the first and say what to do
            first = str(error).split(":", 1)[-1].strip().split(". ")[0][:200]
            raise ValueError(
                f"Cannot resume {checkpoint}: it holds a model of another shape ({first}). Resume with the run's own "
                "model settings and objective (its config.yaml), or train into a new output_dir."
            ) from None
        optimizer.load_state_dict(optim["optimizer"])
        self.ema.model.load_state_dict(ema_weights)
        if (
            state.get("global_batch_size") != self.config.train.global_batch_size
            or state.get("seed") != self.config.seed
        ):
            raise ValueError(
                f"Cannot resume {checkpoint}: it was trained with seed {state.get('seed')} and global batch "
                f"{state.get('global_batch_size')}, this run asks for seed {self.config.seed} and global batch "
                f"{self.config.train.global_batch_size}; the data order would change."
            )
        if self.accelerator.is_main_process:
            _truncate_log(self.out / LOG_FILE, state["step"])
            self.accelerator.print(f"Resumed from {checkpoint} at step {state['step']}.")
        return int(state["step"]), optim.get("scaler")

    def save(self, step: int) -> Path:
        if self.accelerator.is_main_process:
            scaler = self.accelerator.scaler
            state = {
                "step": step,
                "seed": self.config.seed,
                "global_batch_size": self.config.train.global_batch_size,
                "samples_seen": step * self.config.train.global_batch_size,
                "num_processes": self.accelerator.num_processes,
                "epoch": self.order.epoch_of(step),
                "config": config_to_dict(self.config),
            }
            ckpt.save_checkpoint(
                self.checkpoints,
                step,
                ema_model=self.ema.model,
                training_model=self.accelerator.unwrap_model(self.model),
                optimizer=self.optimizer.optimizer,
                scaler=scaler,
                trainer_state=state,
                keep=self.config.train.keep_checkpoints,
            )
        self.accelerator.wait_for_everyone()
        return self.checkpoints / checkpoint_name(step)

    # ---------------------------------------------------------------- the step
    def _randomness(self, step: int) -> StepRandomness:
        config = self.config
        return draw_step_randomness(
            self.objective,
            config.seed,
            step,
            config.train.global_batch_size,
            self.data.latent_shape,
            self.accelerator.unwrap_model(self.model).config.class_dropout_prob,
            self.device,
        )

    def train_step(self, step: int, batch, randomness: StepRandomness) -> dict[str, torch.Tensor]:
        """One optimizer step on this process's share of the global batch.

        Returns this process's loss sums and the gradient norm as device tensors, unread:
        reading them waits for the device, so the loop does it only on steps that use them.
        """
        mine = randomness.slice(self.positions)
        mean, logvar, labels = self.data.moments(batch, self.vae, self.device)
        null_class = self.accelerator.unwrap_model(self.model).config.num_classes
        labels = torch.where(mine.drop_labels, torch.full_like(labels, null_class), labels)
        x0 = self.vae.sample_latent(mean, logvar, noise=mine.latent_eps)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, step)
        totals: dict[str, float] = {}
        starts = range(0, self.share, self.micro)
        for n, start in enumerate(starts):
            part = slice(start, start + self.micro)
            sync = n == len(starts) - 1
            with self.accelerator.no_sync(self.model) if not sync else contextlib.nullcontext():
                with self.accelerator.autocast():
                    losses = self._losses(x0[part], labels[part], mine.noise[part], mine.times[part])
                self.accelerator.backward(losses["loss"].mean() * (self.micro / self.share))
            for key, value in losses.items():
                totals[key] = totals.get(key, 0.0) + value.detach().float().sum()
        grad_norm = None
        if self.config.train.grad_clip:
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.accelerator.unwrap_model(self.model), step)
        if grad_norm is not None:
            totals["grad_norm"] = grad_norm.detach() if torch.is_tensor(grad_norm) else torch.tensor(grad_norm)
        return totals

    def _losses(
        self, x0: torch.Tensor, labels: torch.Tensor, noise: torch.Tensor, times: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The objective's per-sample losses (B,), plus the representation losses that are on."""
        train = self.config.train
        if not (train.dispersive_weight or train.repa_weight):
            return self.objective.training_losses(self.forward, x0, labels, noise=noise, t=times)
        captured = []

        def denoiser(x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out, features = self.forward(x, timesteps, y, features_after=self.representation_depth)
            captured.append(features)  # (B, N, C)
            return out

        losses = self.objective.training_losses(denoiser, x0, labels, noise=noise, t=times)
        features = captured[0]
        if train.dispersive_weight:
            # A loss of the batch, not of a sample: each sample carries the batch's value.
            losses["dispersive"] = dispersive_loss(features, train.dispersive_tau).expand(x0.shape[0])
            losses["loss"] = losses["loss"] + train.dispersive_weight * losses["dispersive"]
        if train.repa_weight:
            model = self.accelerator.unwrap_model(self.model)
            target = self.repa_encoder(self.vae.decode(x0.float()), model.grid)  # (B, N, D) of the clean images
            losses["repa"] = repa_loss(model.projector(features), target)
            losses["loss"] = losses["loss"] + train.repa_weight * losses["repa"]
        return losses

    def read_stats(self, totals: dict[str, torch.Tensor]) -> dict[str, float]:
        """Global per-sample means of a step's losses (an all-reduce and a host sync)."""
        totals = dict(totals)
        grad_norm = totals.pop("grad_norm", None)
        stats = {
            key: self.accelerator.reduce(value, "sum").item() / self.config.train.global_batch_size
            for key, value in totals.items()
        }
        if grad_norm is not None:
            stats["grad_norm"] = float(grad_norm)
        return stats

    # ---------------------------------------------------------------- the loop
    def train(self) -> Path:
        """Train from the resumed step to train.max_steps, then draw the final grid and loss plot."""
        config, train = self.config, self.config.train
        main = self.accelerator.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out / CONFIG_FILE)
            (self.out / CLASS_NAMES_FILE).write_text(json.dumps(self.data.class_names))
        self.accelerator.init_trackers("tensorboard")
        step = self.start_step
        if step >= train.max_steps:
            return self._finish_trained_run()
        # The loader yields the batches of steps step, step + 1, ... in order (its keys are a
        # function of the step alone); the loop draws each step's other random numbers.
        keys = StepKeys(self.order, step, train.max_steps, self.positions, self.device)
        loader = self.data.loader(keys, num_workers=config.data.num_workers)
        bar = tqdm(total=train.max_steps, initial=step, desc="training", disable=not main, dynamic_ncols=True)
        window_step, window_start = step, time.perf_counter()  # the steps the next report's speed covers
        for batch in loader:
            totals = self.train_step(step, batch, self._randomness(step))
            step += 1
            done = step == train.max_steps  # the loader's last batch: the loop ends after this step
            evaluating = self._eval_due(step)
            reporting = evaluating or done or step % train.log_every == 0
            checkpointing = done or step % train.checkpoint_every == 0

            # Read the losses: that waits for the device, so only on steps that use them. A
            # non-finite loss stops the run here, before any checkpoint can hold it.
            if reporting or checkpointing:
                stats = self.read_stats(totals)
                if not math.isfinite(stats["loss"]):
                    raise FloatingPointError(
                        f"Loss became {stats['loss']} at step {step}; lower train.lr, enable train.grad_clip or use bf16 with model.qk_norm=true."
                    )

            # Report: evaluate, then log the step; the speed counts the evaluation's time.
            if reporting:
                scores = self.evaluate() if evaluating else None
                speed = (step - window_step) * train.global_batch_size / (time.perf_counter() - window_start)
                self._log(step, stats, speed, scores)
                if scores is not None and done:
                    for line in _final_score_lines(step, scores, train.eval_samples):
                        tqdm.write(line)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{speed:.0f}")
                window_step, window_start = step, time.perf_counter()
            bar.update(1)

            # Checkpoint.
            if checkpointing:
                self.save(step)

            # Sample grid; the final one follows the loop.
            if train.sample_every and step % train.sample_every == 0 and not done:
                self.sample_grid(step)
        bar.close()
        self._final_pictures(step)
        self.accelerator.end_training()
        return self.out

    def _finish_trained_run(self) -> Path:
        """A run resumed at train.max_steps trains nothing; one killed after its final checkpoint
        but before its grid and loss plot draws them now."""
        step = self.start_step
        # The main process decides for all, as sample_grid waits for everyone.
        drawn = [self.accelerator.is_main_process and self._final_pictures_drawn(step)]
        broadcast_object_list(drawn)
        if not drawn[0]:
            self._final_pictures(step)
        self.accelerator.print(
            f"Nothing to do: the run is already at step {step} >= train.max_steps={self.config.train.max_steps}."
            if drawn[0]
            else f"The run is already at step {step}; wrote its missing sample grid and loss plot."
        )
        return self.out

    def _final_pictures(self, step: int) -> None:
        """The sample grid of `step`, then the loss plot: the last file a run writes."""
        self.sample_grid(step)
        if self.accelerator.is_main_process:
            save_loss_plot(self.out / LOG_FILE, self.out / LOSS_PLOT)

    def _final_pictures_drawn(self, step: int) -> bool:
        """Whether the loss plot, the last file a run writes, is newer than the checkpoint of `step`."""
        plot, state = self.out / LOSS_PLOT, self.checkpoints / checkpoint_name(step) / TRAINER_STATE_FILE
        return plot.is_file() and (not state.is_file() or plot.stat().st_mtime >= state.stat().st_mtime)

    def _eval_due(self, step: int) -> bool:
        """Every train.eval_every steps and at the end (train.final_eval), on the built-in set only: the
        built-in feature network knows no other."""
        train = self.config.train
        due = (train.eval_every and step % train.eval_every == 0) or (train.final_eval and step == train.max_steps)
        return bool(due) and self.config.data.dataset == "animals"

    def _log(self, step: int, stats: dict[str, float], speed: float, scores: dict[str, Any] | None) -> None:
        """Step `step`'s record: to the trackers, and a line of log.jsonl (main process)."""
        record = {
            "step": step,
            **{k: round(v, 6) for k, v in stats.items()},
            "lr": learning_rate(self.config, step - 1),
            "images_per_s": round(speed, 2),
            **(_eval_fields(scores, self.config.train.eval_samples) if scores is not None else {}),
        }
        self.accelerator.log(_tracker_scalars(record), step=step)
        if self.accelerator.is_main_process:
            with open(self.out / LOG_FILE, "a") as log:
                log.write(json.dumps(record) + "\n")

    def evaluate(self) -> dict[str, Any] | None:
        """score_model's FID and class accuracy (overall and per class) of the EMA model on `train.eval_samples`
        class-balanced samples; None on the other processes, which wait for it."""
        scores = None
        if self.accelerator.is_main_process:
            from sdtgen.evaluation.evaluate import score_model

            sample = self.config.sample
            scores = score_model(
                self.ema.model,
                self.vae,
                objective=self.config.objective,
                num_samples=self.config.train.eval_samples,
                seed=self.config.seed,
                sampler=sample.sampler,
                steps=self.config.train.eval_steps or sample.steps,
                guidance=sample.guidance(),
            )
        self.accelerator.wait_for_everyone()
        return scores

    def sample_grid(self, step: int) -> None:
        """A grid of `sample.per_class` EMA samples for every class, one row per class."""
        if self.accelerator.is_main_process:
            sample = self.config.sample
            save_sample_grid(
                self.ema.model,
                self.vae,
                self.data.class_names,
                self.out / "samples" / f"grid-{step:07d}.png",
                objective=self.config.objective,
                sampler=sample.sampler,
                steps=sample.steps,
                guidance=sample.guidance(),
                per_class=sample.per_class,
                seed=self.config.seed,
                classes=sample.classes,
            )
        self.accelerator.wait_for_everyone()


def _eval_fields(scores: dict[str, Any], samples: int) -> dict[str, Any]:
    """An evaluation's scores as log.jsonl fields."""
    return {
        "eval_fid": round(scores["fid"], 4),
        "eval_class_accuracy": round(scores["class_accuracy"], 4),
        "eval_class_accuracy_per_class": {
            name: round(accuracy, 4) for name, accuracy in scores["class_accuracy_per_class"].items()
        },
        "eval_samples": samples,
    }


def _final_score_lines(step: int, scores: dict[str, Any], samples: int) -> list[str]:
    """What the run prints of its final evaluation: FID and class accuracy, then every class's accuracy."""
    from sdtgen.evaluation.evaluate import class_accuracy_lines

    return [
        f"Step {step}: FID {scores['fid']:.2f} and class accuracy {scores['class_accuracy']:.1%} on "
        f"{samples} samples against the training split (built-in feature network; `sdtgen eval` for more samples).",
        *class_accuracy_lines(scores["class_accuracy_per_class"]),
    ]


def _tracker_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A log.jsonl record as tracker scalars under `train/`; a dict (per-class accuracy) gives one scalar per key,
    where accelerate's add_scalars would write one TensorBoard run folder per key."""
    scalars = {}
    for key, value in record.items():
        if isinstance(value, dict):
            scalars.update({f"train/{key}/{name}": v for name, v in value.items()})
        elif key != "step":
            scalars[f"train/{key}"] = value
    return scalars


def _tensorboard_if_installed() -> list[str] | None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return None
    return ["tensorboard"]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past the resumed step, written by the interrupted run after its last save."""
    if path.is_file():
        kept = [record for record in read_log(path) if record["step"] <= step]
        path.write_text("".join(json.dumps(record) + "\n" for record in kept))


def train(config: RunConfig) -> Path:
    """Train (or resume) the run described by `config`, holding its folder's lock throughout; returns the run folder."""
    with hold_run_folder(config.output_dir):
        return Trainer(config).train()
