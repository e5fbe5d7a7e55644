"""Sampling latents from a trained denoiser with diffusers schedulers and classifier-free guidance.

Sample i of a request depends only on its own seed: its initial noise and every noise its
stochastic sampler draws come from a generator seeded with seeds[i], so the images are
the same whatever the batch size or the number of processes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)
from tqdm.auto import tqdm

# DiT's training schedule; samplers must use the very same betas.
DDPM_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)

SAMPLERS = {"ddpm": ("ddpm", "ddim", "dpm++"), "flow": ("euler", "heun")}
DEFAULT_SAMPLER = {"ddpm": "ddim", "flow": "euler"}
DEFAULT_STEPS = {"ddpm": 250, "ddim": 50, "dpm++": 25, "euler": 50, "heun": 25}


def make_scheduler(objective: str, sampler: str, learn_sigma: bool):
    """The diffusers scheduler for `sampler`, matched to the training objective."""
    if objective not in SAMPLERS:
        raise ValueError(f"Unknown objective {objective!r}; expected one of {', '.join(SAMPLERS)}.")
    if sampler not in SAMPLERS[objective]:
        raise ValueError(f"Sampler {sampler!r} does not fit objective {objective!r}; choose one of {', '.join(SAMPLERS[objective])}.")
    if sampler == "ddpm":
        variance = "learned_range" if learn_sigma else "fixed_small"
        return DDPMScheduler(**DDPM_SCHEDULE, variance_type=variance, clip_sample=False)
    if sampler == "ddim":
        return DDIMScheduler(**DDPM_SCHEDULE, clip_sample=False, set_alpha_to_one=False)
    if sampler == "dpm++":
        return DPMSolverMultistepScheduler(**DDPM_SCHEDULE, algorithm_type="dpmsolver++")
    # Flow: x_t = (1 - t) x0 + t noise, velocity noise - x0, model timestep t * 1000: diffusers' convention.
    scheduler_class = FlowMatchEulerDiscreteScheduler if sampler == "euler" else FlowMatchHeunDiscreteScheduler
    return scheduler_class(num_train_timesteps=1000, shift=1.0)


def guided_prediction(
    model, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cfg: float, null_class: int, cfg_channels: int | None
) -> torch.Tensor:
    """Classifier-free guidance: uncond + cfg * (cond - uncond) on the first `cfg_channels` channels.

    By default every channel of the prediction is guided; DiT's original code guided only 3
    of 4 latent channels, which `cfg_channels=3` reproduces for exact comparisons. A learned
    variance (the second half of the output) is taken from the conditional pass, as in DiT.
    """
    if cfg == 1.0:
        return model(x, t, labels)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, null_class)]))
    cond, uncond = out.chunk(2)
    guided = cfg_channels if cfg_channels is not None else x.shape[1]
    mixed = uncond[:, :guided] + cfg * (cond[:, :guided] - uncond[:, :guided])
    return torch.cat([mixed, cond[:, guided:]], dim=1)


@torch.no_grad()
def sample_latents(
    model,
    labels: torch.Tensor,
    seeds: Sequence[int],
    *,
    objective: str,
    sampler: str | None = None,
    steps: int | None = None,
    cfg: float = 1.0,
    cfg_channels: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Draw one latent per (label, seed) from `model` (an SDTDiT-like module in eval mode)."""
    sampler = sampler or DEFAULT_SAMPLER[objective]
    steps = steps or DEFAULT_STEPS[sampler]
    if steps < 1:
        raise ValueError(f"The number of sampling steps must be at least 1, got {steps}.")
    if cfg < 0:
        raise ValueError(f"The guidance scale must be >= 0 (1 = no guidance), got {cfg}.")
    config = model.config
    if cfg != 1.0 and config.class_dropout_prob <= 0:
        raise ValueError("This model was trained without label dropout, so it has no null class for guidance; use cfg=1.")
    device = next(model.parameters()).device
    shape = (config.in_channels, config.input_size, config.input_size)
    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    x = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)
    scheduler = make_scheduler(objective, sampler, config.learn_sigma)
    scheduler.set_timesteps(steps, device=device)
    # DDPM-family schedulers may scale the noise and the model input; flow schedulers do not.
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    labels = labels.to(device)
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        out = guided_prediction(model, model_input, t.expand(x.shape[0]), labels, cfg, config.num_classes, cfg_channels)
        if sampler != "ddpm":  # only DDPM uses the learned variance
            out = out[:, : x.shape[1]]
        # Per-sample CPU generators keep stochastic steps independent of the batch layout.
        x = scheduler.step(out.float(), t, x, generator=generators if sampler == "ddpm" else None).prev_sample
    return x
