"""The training loop: Accelerate, AdamW, EMA, atomic checkpoints and exact resume.

One optimizer step consumes `train.global_batch_size` samples whatever the number of
processes: each process takes its share of the global batch (training/randomness.py) and, if
`train.micro_batch_size` is smaller, accumulates gradients over micro-batches. DDP averages
the shares' gradients, so N processes compute the update of one process with the same
global batch.
"""

from __future__ import annotations

import contextlib
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

from sdtgen.config import RunConfig, config_to_dict, save_config
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
)
from sdtgen.training import checkpoint as ckpt
from sdtgen.training.data import prepare_training_data
from sdtgen.training.ema import EMA
from sdtgen.training.precision import resolve_mixed_precision
from sdtgen.training.randomness import EpochOrder, StepKeys, StepRandomness, draw_step_randomness, init_seed
from sdtgen.training.reporting import save_loss_plot, save_sample_grid
from sdtgen.training.representation import dispersive_loss, load_encoder, repa_loss
from sdtgen.training.run_lock import hold_run_folder


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
    t = config.train
    if t.warmup_steps > 0 and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.lr_schedule == "constant":
        return t.lr
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    if t.lr_schedule == "cosine":
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return t.lr * (1.0 - progress)


class Trainer:
    """Owns one run folder; `Trainer(config).train()` runs or resumes it to train.max_steps."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        t = config.train
        # process_state() also stops a CPU launch whose processes did not join into one job.
        t.mixed_precision = resolve_mixed_precision(t.mixed_precision, process_state().device)  # config.yaml records it
        self.accelerator = Accelerator(
            mixed_precision=t.mixed_precision, log_with=_tensorboard_if_installed(), project_dir=config.output_dir
        )
        self.device = self.accelerator.device
        if config.model.attention_backend == "flex" and self.device.type == "cpu":  # found before the data is prepared
            raise ValueError(
                "model.attention_backend=flex cannot train on CPU (FlexAttention has no CPU backward in this torch); "
                "use auto or sdpa, or train on a GPU."
            )
        if self.device.type == "cuda" and t.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if self.device.type == "cpu":
            # `accelerate launch` pins OMP_NUM_THREADS=1, which halves a laptop's throughput;
            # share the cores among the processes instead.
            torch.set_num_threads(t.cpu_threads or max(1, (os.cpu_count() or 1) // self.accelerator.num_processes))
        set_seed(config.seed)  # for third-party code; sdtgen's own draws use the streams below
        self.out = Path(config.output_dir)
        self.checkpoints = self.out / CHECKPOINTS_DIR
        world = self.accelerator.num_processes
        if t.global_batch_size % world:
            raise ValueError(
                f"train.global_batch_size={t.global_batch_size} must divide evenly over {world} processes; "
                f"use a multiple of {world}."
            )
        self.share = t.global_batch_size // world
        rank = self.accelerator.process_index
        self.positions = slice(rank * self.share, (rank + 1) * self.share)  # this process's part of each global batch
        self.micro = t.micro_batch_size or self.share
        if self.share % self.micro:
            raise ValueError(
                f"Each process's share ({self.share}) must be a multiple of train.micro_batch_size={self.micro}."
            )

        self.data, self.vae = prepare_training_data(config, self.accelerator)
        self.repa_encoder = load_encoder(t.repa_encoder).to(self.device) if t.repa_weight else None
        projector_dim = self._encoder_width() if self.repa_encoder is not None else 0
        # Initialise from a generator of the seed alone: extracting the latent cache first (or
        # not) draws from the global one, and the model must not depend on that.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(config.seed))
            model = build_model(config, len(self.data.class_names), self.data.latent_shape, projector_dim)
        if self.repa_encoder is not None and model.projector is None:
            raise ValueError("train.repa_weight > 0 needs a model with REPA's projector; model.pretrained has none.")
        self.representation_depth = t.representation_depth or max(1, model.config.depth // 3)
        if self.representation_depth > model.config.depth:
            raise ValueError(
                f"train.representation_depth={self.representation_depth} is deeper than the model ({model.config.depth} blocks)."
            )
        self.objective = build_objective(config, model.config.learn_sigma)
        if hasattr(self.objective, "to"):
            self.objective.to(self.device)
        model.to(self.device)
        self.ema = EMA(model, t.ema_decay, t.ema_warmup, t.ema_std)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.start_step, scaler_state = 0, None
        resume_from = ckpt.resolve_resume(t.resume, self.checkpoints)
        if resume_from is not None:
            self.start_step, scaler_state = self._restore(resume_from, model, optimizer)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        if scaler_state is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(scaler_state)
        self.forward = torch.compile(self.model) if t.compile else self.model
        self.order = EpochOrder(len(self.data.dataset), t.global_batch_size, config.seed)

    def _encoder_width(self) -> int:
        """The REPA encoder's feature width, read from one zero latent's decoded image."""
        latent = torch.zeros(1, *self.data.latent_shape, device=self.device)
        return self.repa_encoder(self.vae.decode(latent), (1, 1)).shape[-1]

    # ---------------------------------------------------------------- state
    def _restore(self, checkpoint: Path, model: SDTDiT, optimizer: torch.optim.Optimizer) -> tuple[int, dict | None]:
        """Load weights, EMA, optimizer and RNG of `checkpoint`; return (step, grad-scaler state)."""
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
        ckpt.restore_rng_state(checkpoint)
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
        cfg = self.config
        return draw_step_randomness(
            self.objective,
            cfg.seed,
            step,
            cfg.train.global_batch_size,
            self.data.latent_shape,
            self.accelerator.unwrap_model(self.model).config.class_dropout_prob,
            self.device,
        )

    def train_step(self, step: int, batch, randomness: StepRandomness) -> dict[str, torch.Tensor]:
        """One optimizer step on this process's share of the global batch.

        Returns this process's loss sums and the gradient norm as device tensors, unread:
        reading them waits for the device, so the loop does it only on steps that log.
        """
        t = self.config.train
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
        if t.grad_clip:
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), t.grad_clip)
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
        t = self.config.train
        if not (t.dispersive_weight or t.repa_weight):
            return self.objective.training_losses(self.forward, x0, labels, noise=noise, t=times)
        captured = []

        def denoiser(x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out, features = self.forward(x, timesteps, y, features_after=self.representation_depth)
            captured.append(features)  # (B, N, C)
            return out

        losses = self.objective.training_losses(denoiser, x0, labels, noise=noise, t=times)
        features = captured[0]
        if t.dispersive_weight:
            # A loss of the batch, not of a sample: each sample carries the batch's value.
            losses["dispersive"] = dispersive_loss(features, t.dispersive_tau).expand(x0.shape[0])
            losses["loss"] = losses["loss"] + t.dispersive_weight * losses["dispersive"]
        if t.repa_weight:
            model = self.accelerator.unwrap_model(self.model)
            target = self.repa_encoder(self.vae.decode(x0.float()), model.grid)  # (B, N, D) of the clean images
            losses["repa"] = repa_loss(model.projector(features), target)
            losses["loss"] = losses["loss"] + t.repa_weight * losses["repa"]
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
        cfg, t = self.config, self.config.train
        main = self.accelerator.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / CONFIG_FILE)
            (self.out / CLASS_NAMES_FILE).write_text(json.dumps(self.data.class_names))
        self.accelerator.init_trackers("tensorboard")
        step = self.start_step
        if step >= t.max_steps:
            # A run killed after its final checkpoint but before its grid and loss plot finishes
            # them now; the main process decides for all, as sample_grid waits for everyone.
            written = [main and _final_outputs_written(self.out, self.checkpoints / checkpoint_name(step))]
            broadcast_object_list(written)
            if not written[0]:
                self.sample_grid(step)
                if main:
                    save_loss_plot(self.out / LOG_FILE, self.out / "loss.png")
            self.accelerator.print(
                f"Nothing to do: the run is already at step {step} >= train.max_steps={t.max_steps}."
                if written[0]
                else f"The run is already at step {step}; wrote its missing sample grid and loss plot."
            )
            return self.out
        # The loader yields the batches of steps step, step + 1, ... in order (its keys are a
        # function of the step alone); the loop draws each step's other random numbers.
        keys = StepKeys(self.order, step, t.max_steps, self.positions, self.device)
        loader = self.data.loader(keys, num_workers=cfg.data.num_workers)
        bar = tqdm(total=t.max_steps, initial=step, desc="training", disable=not main, dynamic_ncols=True)
        window_start, window_images = time.perf_counter(), 0
        log = open(self.out / LOG_FILE, "a") if main else None
        for batch in loader:
            totals = self.train_step(step, batch, self._randomness(step))
            step += 1
            window_images += t.global_batch_size
            logging = step % t.log_every == 0 or step == t.max_steps or self._eval_due(step)
            saving = step % t.checkpoint_every == 0 or step == t.max_steps
            if logging or saving:  # reading the losses waits for the device: only when they are used
                stats = self.read_stats(totals)
                if not math.isfinite(stats["loss"]):  # checked before any save, so no checkpoint holds it
                    raise FloatingPointError(
                        f"Loss became {stats['loss']} at step {step}; lower train.lr, enable train.grad_clip or use bf16 with model.qk_norm=true."
                    )
            if logging:
                evaluation = self.evaluate(step) if self._eval_due(step) else {}
                speed = window_images / (time.perf_counter() - window_start)
                record = {
                    "step": step,
                    **{k: round(v, 6) for k, v in stats.items()},
                    "lr": learning_rate(cfg, step - 1),
                    "images_per_s": round(speed, 2),
                    **evaluation,
                }
                self.accelerator.log(_tracker_scalars(record), step=step)
                if log:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                bar.set_postfix(loss=f"{stats['loss']:.4f}", img_s=f"{speed:.0f}")
                window_start, window_images = time.perf_counter(), 0
            bar.update(1)
            if saving:
                self.save(step)
            if t.sample_every and step % t.sample_every == 0 and step != t.max_steps:
                self.sample_grid(step)
        bar.close()
        if log:
            log.close()
        self.sample_grid(step)
        if main:
            save_loss_plot(self.out / LOG_FILE, self.out / "loss.png")
        self.accelerator.end_training()
        return self.out

    def _eval_due(self, step: int) -> bool:
        t = self.config.train
        if self.config.data.dataset != "animals":  # the built-in feature network only knows this set
            return False
        return bool((t.eval_every and step % t.eval_every == 0) or (t.final_eval and step == t.max_steps))

    def evaluate(self, step: int) -> dict[str, Any]:
        """FID and class accuracy (overall and per class) of the EMA model on `train.eval_samples` class-balanced samples."""
        metrics: dict[str, Any] = {}
        if self.accelerator.is_main_process:
            from sdtgen.evaluation.evaluate import class_accuracy_lines, score_model

            s = self.config.sample
            result = score_model(
                self.ema.model,
                self.vae,
                objective=self.config.objective,
                num_samples=self.config.train.eval_samples,
                seed=self.config.seed,
                sampler=s.sampler,
                steps=self.config.train.eval_steps or s.steps,
                guidance=s.guidance(),
            )
            metrics = {
                "eval_fid": round(result["fid"], 4),
                "eval_class_accuracy": round(result["class_accuracy"], 4),
                "eval_class_accuracy_per_class": {
                    name: round(accuracy, 4) for name, accuracy in result["class_accuracy_per_class"].items()
                },
                "eval_samples": self.config.train.eval_samples,
            }
            if step == self.config.train.max_steps:
                tqdm.write(
                    f"Step {step}: FID {result['fid']:.2f} and class accuracy {result['class_accuracy']:.1%} on "
                    f"{self.config.train.eval_samples} samples against the training split (built-in feature network; "
                    "`sdtgen eval` for more samples)."
                )
                for line in class_accuracy_lines(result["class_accuracy_per_class"]):
                    tqdm.write(line)
        self.accelerator.wait_for_everyone()
        return metrics

    def sample_grid(self, step: int) -> None:
        """A grid of `sample.per_class` EMA samples for every class, one row per class."""
        if self.accelerator.is_main_process:
            s = self.config.sample
            save_sample_grid(
                self.ema.model,
                self.vae,
                self.data.class_names,
                self.out / "samples" / f"grid-{step:07d}.png",
                objective=self.config.objective,
                sampler=s.sampler,
                steps=s.steps,
                guidance=s.guidance(),
                per_class=s.per_class,
                seed=self.config.seed,
                classes=s.classes,
            )
        self.accelerator.wait_for_everyone()


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


def _final_outputs_written(out: Path, checkpoint: Path) -> bool:
    """Whether loss.png, the last thing a run writes (after its grid), is newer than `checkpoint`."""
    plot, state = out / "loss.png", checkpoint / TRAINER_STATE_FILE
    return plot.is_file() and (not state.is_file() or plot.stat().st_mtime >= state.stat().st_mtime)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the resumed step, written by the interrupted run after its last save."""
    if path.is_file():
        lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in lines))


def train(config: RunConfig) -> Path:
    """Train (or resume) the run described by `config`, holding its folder's lock throughout; returns the run folder."""
    with hold_run_folder(config.output_dir):
        return Trainer(config).train()
