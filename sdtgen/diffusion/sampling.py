"""Sampling latents from a trained denoiser with diffusers schedulers and classifier-free guidance.

Sample i of a request depends only on its own seed: its initial noise and every noise its
stochastic sampler draws come from a generator seeded with seeds[i], so the images are
the same whatever the batch size or the number of processes. A request with one seed
gives sample i the seed `sample_seed(seed, i)`.

Guidance is described by `Guidance`: its scale (1 = off; DEFAULT_GUIDANCE unless said
otherwise), how many latent channels it acts on, and the interval of noise levels where it
applies. The noise level of a step is `timestep / num_train_timesteps` in [0, 1]: 1 is pure
noise, 0 the clean image (for flow models it is t of x_t = (1 - t) x0 + t noise; for DDPM
it is the diffusion time).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)
from diffusers.utils.torch_utils import randn_tensor

from sdtgen.diffusion.ddpm import DDPM_SCHEDULE
from sdtgen.diffusion.flow_dpm_solver import FlowMatchDPMSolverMultistepScheduler

# objective -> sampler name -> the scheduler class make_scheduler builds for it.
SCHEDULER_CLASSES = {
    "ddpm": {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler},
    "flow": {
        "euler": FlowMatchEulerDiscreteScheduler,
        "heun": FlowMatchHeunDiscreteScheduler,
        "dpm++": FlowMatchDPMSolverMultistepScheduler,
    },
}
# The defaults of every sampling entry point (pipeline, `sdtgen sample/eval/inspect`, training grids).
SAMPLERS = {objective: tuple(classes) for objective, classes in SCHEDULER_CLASSES.items()}
# Flow: DPM++ at DEFAULT_STEPS scores as well as the most accurate ODE solve measured, at a
# fraction of its model evaluations (the sampler curve on the built-in model, docs/sampling.md).
DEFAULT_SAMPLER = {"ddpm": "ddim", "flow": "dpm++"}
DEFAULT_STEPS = {
    "ddpm": {"ddpm": 250, "ddim": 50, "dpm++": 25},
    "flow": {"euler": 50, "heun": 25, "dpm++": 12},
}
FOREIGN_SCHEDULER_STEPS = 50  # for a diffusers scheduler that make_scheduler does not build
DEFAULT_GUIDANCE = 2.0
# A prime stride: requests made with different seeds share no sample seed unless one of
# them holds more than 1,000,003 samples. The trainer's sample grids follow the same rule.
SEED_STRIDE = 1_000_003


def make_scheduler(objective: str, sampler: str | None, learn_sigma: bool):
    """The diffusers scheduler for `sampler` (None: the objective's DEFAULT_SAMPLER), matched to the training objective."""
    if objective not in SAMPLERS:
        raise ValueError(f"Unknown objective {objective!r}; expected one of {', '.join(SAMPLERS)}.")
    sampler = sampler or DEFAULT_SAMPLER[objective]
    if sampler not in SAMPLERS[objective]:
        raise ValueError(
            f"Sampler {sampler!r} does not fit objective {objective!r}; choose one of {', '.join(SAMPLERS[objective])}."
        )
    scheduler_class = SCHEDULER_CLASSES[objective][sampler]
    if objective == "flow" and sampler == "dpm++":
        # Order 2 (DPM-Solver++(2M)), as for DDPM: order 3 is unstable with guidance at few steps.
        # final_sigmas_type="zero" ends on t = 0, where the log-SNR step is infinite and diffusers
        # takes a first-order step whatever lower_order_final says: x = the model's x0 prediction.
        return scheduler_class(
            num_train_timesteps=1000,
            algorithm_type="dpmsolver++",
            solver_order=2,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            final_sigmas_type="zero",
        )
    if objective == "flow":
        # x_t = (1 - t) x0 + t noise, velocity noise - x0, model timestep t * 1000: diffusers' convention.
        return scheduler_class(num_train_timesteps=1000, shift=1.0)
    settings = {
        "ddpm": dict(variance_type="learned_range" if learn_sigma else "fixed_small", clip_sample=False),
        "ddim": dict(clip_sample=False, set_alpha_to_one=False),
        "dpm++": dict(algorithm_type="dpmsolver++"),
    }[sampler]
    return scheduler_class(**DDPM_SCHEDULE, **settings)


def sampler_of(scheduler) -> str | None:
    """The SAMPLERS name of `scheduler`, or None for a scheduler that make_scheduler does not build."""
    classes = SCHEDULER_CLASSES[objective_of(scheduler)]
    return next((name for name, cls in classes.items() if type(scheduler) is cls), None)


def objective_of(scheduler: Any) -> str:
    """The objective a scheduler (or its class name) samples: the flow-matching ones are all FlowMatch*.

    diffusers' and sdtgen's (FlowMatchDPMSolverMultistepScheduler) alike; the class name is what a
    saved pipeline's model_index.json records.
    """
    name = scheduler if isinstance(scheduler, str) else type(scheduler).__name__
    return "flow" if name.startswith("FlowMatch") else "ddpm"


def default_steps(scheduler) -> int:
    """DEFAULT_STEPS of the scheduler's objective and sampler; FOREIGN_SCHEDULER_STEPS for a scheduler sdtgen does not
    build."""
    return DEFAULT_STEPS[objective_of(scheduler)].get(sampler_of(scheduler), FOREIGN_SCHEDULER_STEPS)


def default_guidance(model_config: Any, preferred: float | None = None) -> float:
    """The guidance scale when none is asked for: `preferred` (a run's `sample.guidance_scale`), else DEFAULT_GUIDANCE.

    A model trained without label dropout has no null class to guide with: 1 (off) for it.
    """
    if model_config["class_dropout_prob"] <= 0:
        return 1.0
    return DEFAULT_GUIDANCE if preferred is None else preferred


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index` of a request made with `seed`: seed * SEED_STRIDE + index."""
    return seed * SEED_STRIDE + index


def sample_generators(seed: int, indices: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per sample index, seeded with `sample_seed(seed, index)`."""
    return [torch.Generator(device="cpu").manual_seed(sample_seed(seed, i)) for i in indices]


def check_steps(steps: int) -> None:
    if steps < 1:
        raise ValueError(f"The number of sampling steps must be at least 1, got {steps}.")


def check_labels(labels: torch.Tensor, num_classes: int) -> None:
    """ValueError unless `labels` is a 1-d integer tensor of ids in 0..num_classes-1.

    Checked once per sampling call: an id out of range would otherwise reach the label
    embedding, where a GPU stops with a device-side assert and a CPU with an IndexError.
    """
    if not torch.is_tensor(labels) or labels.ndim != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-d tensor of integer class ids, got {labels!r:.80}.")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(
            f"labels must be class ids in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}."
        )


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance, `uncond + scale * (cond - uncond)`, and where it acts.

    scale: 1 turns guidance off (one model pass per step); 0 is the unconditional model.
        Defaults to DEFAULT_GUIDANCE.
    channels: guide the first `channels` latent channels; None (the default) guides all.
        DiT's original code guided 3 of 4 (`channels=3` reproduces it); diffusers'
        DiTPipeline guides all 4. Unguided channels take the conditional prediction.
    interval: (low, high) noise levels, both included, where guidance applies (see the
        module docstring); at other steps the model runs once, conditionally.
    """

    scale: float = DEFAULT_GUIDANCE
    channels: int | None = None
    interval: tuple[float, float] = (0.0, 1.0)

    def check(self, model_config: Any) -> None:
        """Raise ValueError if these settings are invalid or do not fit the model's config."""
        if not 0 <= self.scale < math.inf:  # also refuses NaN
            raise ValueError(f"The guidance scale must be >= 0 and finite (1 = no guidance), got {self.scale}.")
        low, high = self.interval
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(
                f"The guidance interval needs 0 <= LOW <= HIGH <= 1 (noise levels, 1 = pure noise), got {low} {high}."
            )
        in_channels = model_config["in_channels"]
        if self.channels is not None and not 1 <= self.channels <= in_channels:
            raise ValueError(
                f"The guided channels must be 1..{in_channels} (this model's latent channels), got {self.channels}."
            )
        if self.scale != 1.0 and model_config["class_dropout_prob"] <= 0:
            raise ValueError(
                "This model was trained without label dropout, so it has no null class for guidance; "
                "use a guidance scale of 1."
            )

    def applies_at(self, noise_level: float) -> bool:
        return self.scale != 1.0 and self.interval[0] <= noise_level <= self.interval[1]


def guided_prediction(
    model, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, scale: float, null_class: int, channels: int | None
) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond) on the first `channels` channels (None: all).

    By default every channel of the prediction is guided; DiT's original code guided only 3
    of 4 latent channels, which `channels=3` reproduces for exact comparisons. A learned
    variance (the second half of the output) is taken from the conditional pass, as in DiT.
    """
    if scale == 1.0:
        return model(x, t, labels)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, null_class)]))
    cond, uncond = out.chunk(2)
    guided = channels if channels is not None else x.shape[1]
    mixed = uncond[:, :guided] + scale * (cond[:, :guided] - uncond[:, :guided])
    return torch.cat([mixed, cond[:, guided:]], dim=1)


@torch.no_grad()
def denoise(
    model,
    scheduler,
    labels: torch.Tensor,
    *,
    steps: int,
    guidance: Guidance,
    generator: torch.Generator | list[torch.Generator] | None = None,
    progress: Callable[[Iterable], Iterable] = iter,
) -> torch.Tensor:
    """Latents for `labels`: noise drawn with `generator`, denoised by `scheduler` in `steps` steps.

    `model` is an SDTDiT-like module in eval mode. `generator` is a list of one generator
    per sample (then sample i depends on generator i alone, whatever the batch), a single
    generator, or None. `progress` wraps the timestep loop, e.g. in a tqdm bar.
    """
    config = model.config
    check_steps(steps)
    guidance.check(config)
    check_labels(labels, config.num_classes)
    device, batch = model.device, labels.shape[0]
    if isinstance(generator, list) and len(generator) != batch:
        raise ValueError(f"Got {len(generator)} generators for {batch} samples; pass one per sample or a single one.")
    shape = (batch, config.in_channels, config.input_size, config.input_size)
    # Noise and scheduler state stay float32 whatever the model's dtype.
    x = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    scheduler.set_timesteps(steps, device=device)
    x = x * getattr(scheduler, "init_noise_sigma", 1.0)
    labels = labels.to(device)
    # Only DDPM with a learned variance reads the second half of the output.
    learned_variance = getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
    # Stochastic steps draw from the per-sample generators, so they do not depend on the batch either.
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    total = scheduler.config.num_train_timesteps
    for t in progress(scheduler.timesteps):
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        scale = guidance.scale if guidance.applies_at(float(t) / total) else 1.0
        out = guided_prediction(
            model, model_input.to(model.dtype), t.expand(batch), labels, scale, config.num_classes, guidance.channels
        )
        if not learned_variance:
            out = out[:, : x.shape[1]]
        x = scheduler.step(out.float(), t, x, **step_kwargs).prev_sample
    return x
