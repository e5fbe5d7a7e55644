"""Flow-matching training objective (SiT / LightningDiT style).

Direction convention: t = 0 is data and t = 1 is pure noise, along the linear interpolant

    x_t = (1 - t) * x0 + t * noise,

whose velocity dx_t/dt = noise - x0 is the regression target. Sampling therefore integrates
from t = 1 down to t = 0.

The model is called with ``t * 1000`` (a float in [0, 1000)) so that DiT's timestep
embedder, built for DDPM's integer steps in [0, 1000), serves both objectives unchanged.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

TIME_SAMPLINGS = ("uniform", "logit_normal")


class FlowObjective:
    """Velocity-prediction MSE on the linear interpolant between data and noise."""

    # Scale from t in [0, 1] to the model's timestep input (same range as DDPM's steps).
    timestep_scale = 1000.0

    def __init__(
        self,
        time_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        direction_weight: float = 0.0,
    ) -> None:
        """Configure the objective.

        Args:
            time_sampling: ``uniform`` (t ~ U[0, 1)) or ``logit_normal``
                (t = sigmoid(n), n ~ N(logit_mean, logit_std^2)).
            logit_mean, logit_std: parameters of the logit-normal distribution.
            direction_weight: weight of the velocity-direction loss (LightningDiT's cosine
                loss): 1 - cos(prediction, target) over channels, averaged over positions.
        """
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {time_sampling!r}; expected one of {TIME_SAMPLINGS}")
        if logit_std <= 0:
            raise ValueError(f"logit_std must be positive, got {logit_std}")
        self.time_sampling = time_sampling
        self.logit_mean = logit_mean
        self.logit_std = logit_std
        self.direction_weight = direction_weight

    def sample_timesteps(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw (B,) times in [0, 1] from the configured distribution."""
        if self.time_sampling == "uniform":
            return torch.rand(batch_size, device=device, generator=generator)
        normal = torch.randn(batch_size, device=device, generator=generator)
        return torch.sigmoid(self.logit_mean + self.logit_std * normal)

    @staticmethod
    def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) * x0 + t * noise, with t of shape (B,)."""
        t = t.to(x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
        return (1.0 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The interpolant's velocity dx_t/dt = noise - x0."""
        return noise - x0

    def training_losses(
        self,
        model: Model,
        x0: torch.Tensor,
        class_labels: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses for a batch of clean data ``x0`` (B, C, H, W).

        ``t`` (B,) floats in [0, 1] and ``noise`` default to fresh draws from ``generator``,
        which must live on ``x0``'s device. Returns per-sample ``loss`` and ``mse`` (B,), equal
        unless the direction loss is on (then also ``direction``).
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.interpolate(x0, noise, t)
        # Under autocast the model may answer in half precision; the loss is taken in x0's dtype.
        out = model(x_t, t * self.timestep_scale, class_labels).to(x0.dtype)
        if out.shape != x0.shape:
            raise ValueError(
                f"FlowObjective expects a model output of shape {tuple(x0.shape)}, got "
                f"{tuple(out.shape)} (is the model built with learn_sigma=True?)"
            )
        target = self.velocity_target(x0, noise)
        mse = (out - target).pow(2).flatten(1).mean(dim=1)
        if not self.direction_weight:
            return {"loss": mse, "mse": mse}
        direction = (1 - F.cosine_similarity(out, target, dim=1)).flatten(1).mean(dim=1)  # (B,)
        return {"loss": mse + self.direction_weight * direction, "mse": mse, "direction": direction}
