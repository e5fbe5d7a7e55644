"""DDPM training objective: DiT's Gaussian diffusion with epsilon prediction.

With ``learn_sigma=True`` the model also predicts the interpolation value ``v`` in
[-1, 1] between the smallest and largest reasonable variance (improved DDPM), and the
loss is the hybrid ``mse + vb``: the epsilon MSE plus the variational bound term that
trains only the variance (its mean uses a stop-gradient epsilon).

The schedule is ``DDPM_SCHEDULE`` (DiT's linear betas over 1,000 steps), the one home of
those numbers: the betas come from a ``diffusers.DDPMScheduler`` built from it, and
``sampling.make_scheduler`` builds every DDPM sampler from it too, so sampling uses exactly
the schedule the model was trained with. Every derived array is computed in float64, as
DiT does, and cast to the data's dtype only when it is used.
"""

import math
from collections.abc import Callable

import torch
from diffusers import DDPMScheduler

Model = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Half the width of one 8-bit colour bin on data scaled to [-1, 1].
_HALF_BIN = 1.0 / 255.0
# Data at or beyond these values sits in an edge bin that extends to infinity.
_EDGE = 0.999
_LOG_FLOOR = 1e-12

# DiT's training schedule, as diffusers scheduler settings; training and sampling both use it.
DDPM_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log-probability of the 8-bit bin holding ``x`` under N(mean, exp(log_scale)^2).

    ``x`` is data in [-1, 1] on a grid of 255 bins of width 2/255; the two edge bins extend
    to -inf and +inf so the bins' probabilities sum to one.
    """
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (centred + _HALF_BIN)
    lower = inv_std * (centred - _HALF_BIN)
    # log_ndtr keeps the edge bins accurate far into the tails.
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_survival_lower = torch.special.log_ndtr(-lower)
    bin_mass = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    log_bin = torch.log(bin_mass.clamp(min=_LOG_FLOOR))
    return torch.where(x < -_EDGE, log_cdf_upper, torch.where(x > _EDGE, log_survival_lower, log_bin))


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one."""
    return x.flatten(1).mean(dim=1)


class DDPMObjective:
    """Epsilon-prediction diffusion loss with DiT's linear schedule and optional learned sigma.

    Arrays of length ``num_timesteps`` (float64) are exposed: ``betas``,
    ``alphas_cumprod``, ``alphas_cumprod_prev``, ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod``,
    ``sqrt_recipm1_alphas_cumprod``, ``log_betas``, ``posterior_variance``,
    ``posterior_log_variance_clipped``, ``posterior_mean_coef1``, ``posterior_mean_coef2``.
    """

    _ARRAYS = (
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "log_betas",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    )

    def __init__(self, learn_sigma: bool = True) -> None:
        """Build the arrays of ``DDPM_SCHEDULE``.

        Args:
            learn_sigma: the model outputs 2*C channels (eps, v) and is trained with mse + vb.
        """
        self.learn_sigma = learn_sigma
        self.num_timesteps = DDPM_SCHEDULE["num_train_timesteps"]
        betas = DDPMScheduler(**DDPM_SCHEDULE).betas.to(torch.float64)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = alphas_cumprod_prev
        self.sqrt_alphas_cumprod = alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / alphas_cumprod - 1.0).sqrt()
        self.log_betas = betas.log()
        self.posterior_variance = posterior_variance
        # The posterior variance is 0 at t=0; reuse the t=1 value so its log stays finite.
        self.posterior_log_variance_clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log()
        self.posterior_mean_coef1 = betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod)

    def to(self, device: torch.device | str) -> "DDPMObjective":
        """Move the schedule arrays to ``device`` (saves a host-to-device copy per lookup)."""
        for name in self._ARRAYS:
            setattr(self, name, getattr(self, name).to(device))
        return self

    @staticmethod
    def _extract(arr: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``arr[t]`` cast to ``like``'s dtype and shaped to broadcast over its non-batch dims."""
        values = arr.to(t.device)[t].to(like.dtype)
        return values.view(-1, *([1] * (like.ndim - 1)))

    def sample_timesteps(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Uniform integer timesteps in [0, T)."""
        return torch.randint(0, self.num_timesteps, (batch_size,), device=device, generator=generator)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0): sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise."""
        return (
            self._extract(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._extract(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior_mean_variance(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x0
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        variance = self._extract(self.posterior_variance, t, x_t)
        log_variance = self._extract(self.posterior_log_variance_clipped, t, x_t)
        return mean, variance, log_variance

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        return (
            self._extract(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self._extract(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def model_log_variance(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Learned-range log variance between the clipped log posterior variance and log(beta_t).

        frac * log(beta_t) + (1 - frac) * log(posterior_variance_t), with frac = (v + 1) / 2.
        """
        frac = (v + 1.0) / 2.0
        max_log = self._extract(self.log_betas, t, v)
        min_log = self._extract(self.posterior_log_variance_clipped, t, v)
        return frac * max_log + (1.0 - frac) * min_log

    def vb_terms_bpd(
        self,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        eps: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample VB term in bits per dim for the model output (eps, v).

        KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0 and the discretized Gaussian
        decoder NLL of x0 for t == 0, each averaged over the non-batch dims.
        """
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x0, x_t, t)
        model_mean, _, _ = self.q_posterior_mean_variance(self.predict_x0_from_eps(x_t, t, eps), x_t, t)
        model_log_var = self.model_log_variance(v, t)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var))
        log_likelihood = discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)
        nll = -_mean_flat(log_likelihood)
        return torch.where(t == 0, nll, kl) / math.log(2.0)

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

        ``t`` (B,) integer timesteps and ``noise`` default to fresh draws from ``generator``,
        which must live on ``x0``'s device. Returns ``loss`` and ``mse`` (B,), and with
        learned sigma also ``vb`` (B,), scaled by T/1000 as in DiT; ``loss = mse + vb``.
        """
        if t is None:
            t = self.sample_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, t, noise)
        # Under autocast the model may answer in half precision; the loss is taken in x0's dtype.
        out = model(x_t, t, class_labels).to(x0.dtype)

        channels = x0.shape[1]
        expected = 2 * channels if self.learn_sigma else channels
        if out.shape[1] != expected:
            raise ValueError(
                f"DDPMObjective(learn_sigma={self.learn_sigma}) expects the model to output "
                f"{expected} channels for {channels}-channel data, got {out.shape[1]}"
            )
        eps, v = out.split(channels, dim=1) if self.learn_sigma else (out, None)

        mse = _mean_flat((noise - eps) ** 2)
        if v is None:
            return {"loss": mse, "mse": mse}
        # The detached eps makes the VB term train only the variance, as in improved DDPM.
        vb = self.vb_terms_bpd(x0, x_t, t, eps.detach(), v) * (self.num_timesteps / 1000.0)
        return {"loss": mse + vb, "mse": mse, "vb": vb}
