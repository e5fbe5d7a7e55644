"""Tests of the DDPM and flow-matching training objectives against independent references."""

import functools
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from scipy.stats import norm
from torch.distributions import Normal, kl_divergence

from sdtgen.diffusion import DDPMObjective, FlowObjective, make_objective
from sdtgen.diffusion.sampling import SAMPLERS, make_scheduler

B, C, H, W = 4, 3, 4, 4


@functools.cache
def brute_schedule() -> dict[str, np.ndarray]:
    """The DDPM quantities from the textbook formulas, in float64 numpy."""
    # diffusers' float32 linear betas are the agreed schedule (checked separately below).
    betas = (
        DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
        .betas.numpy()
        .astype(np.float64)
    )
    alpha_bar = np.cumprod(1.0 - betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    post_var = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    return {
        "betas": betas,
        "alpha_bar": alpha_bar,
        "alpha_bar_prev": alpha_bar_prev,
        "post_var": post_var,
        "post_var_clipped": np.concatenate([[post_var[1]], post_var[1:]]),
        "coef1": betas * np.sqrt(alpha_bar_prev) / (1.0 - alpha_bar),
        "coef2": (1.0 - alpha_bar_prev) * np.sqrt(1.0 - betas) / (1.0 - alpha_bar),
    }


def fixed_model(out: torch.Tensor):
    """A fake model that ignores its inputs and returns ``out``."""
    return lambda x_t, t, y: out


def column(values: np.ndarray, t: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values[t.numpy()]).view(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def ddpm() -> DDPMObjective:
    return DDPMObjective(learn_sigma=True)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(B, C, H, W, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    labels = torch.arange(B)
    return x0, noise, labels


def test_betas_match_diffusers(ddpm):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02).betas
    assert ddpm.betas.dtype == torch.float64
    assert torch.equal(ddpm.betas.float(), ref)
    assert ddpm.betas[0].item() == pytest.approx(1e-4)
    assert ddpm.betas[-1].item() == pytest.approx(0.02)
    for sampler in SAMPLERS["ddpm"]:  # every DDPM sampler runs the schedule the model was trained with
        assert torch.equal(make_scheduler("ddpm", sampler, learn_sigma=True).betas, ref)


def test_schedule_arrays_match_brute_force(ddpm):
    ref = brute_schedule()
    np.testing.assert_allclose(ddpm.alphas_cumprod.numpy(), ref["alpha_bar"], rtol=1e-12)
    np.testing.assert_allclose(ddpm.posterior_variance.numpy(), ref["post_var"], rtol=1e-12)
    np.testing.assert_allclose(ddpm.posterior_log_variance_clipped.numpy(), np.log(ref["post_var_clipped"]), rtol=1e-12)


def test_q_sample(ddpm, batch):
    x0, noise, _ = batch
    t = torch.tensor([0, 10, 500, 999])
    alpha_bar = column(brute_schedule()["alpha_bar"], t)
    expected = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    torch.testing.assert_close(ddpm.q_sample(x0, t, noise), expected, rtol=1e-12, atol=1e-12)


def test_posterior_mean_variance(ddpm, batch):
    x0, noise, _ = batch
    t = torch.tensor([1, 2, 300, 999])
    x_t = ddpm.q_sample(x0, t, noise)
    ref = brute_schedule()
    beta, a_bar_prev = (column(ref[k], t) for k in ("betas", "alpha_bar_prev"))
    # Bishop-style product of q(x_t|x_{t-1}) and q(x_{t-1}|x_0), solved for the Gaussian in x_{t-1}.
    precision = (1 - beta) / beta + 1 / (1 - a_bar_prev)
    expected_var = 1 / precision
    expected_mean = expected_var * ((1 - beta).sqrt() * x_t / beta + a_bar_prev.sqrt() * x0 / (1 - a_bar_prev))
    mean, var, log_var = ddpm.q_posterior_mean_variance(x0, x_t, t)
    torch.testing.assert_close(mean, expected_mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(var.expand_as(x0), expected_var.expand_as(x0), rtol=1e-10, atol=0)
    torch.testing.assert_close(log_var, expected_var.log(), rtol=1e-10, atol=1e-10)


def test_vb_kl_matches_torch_distributions(ddpm, batch):
    x0, noise, labels = batch
    t = torch.tensor([1, 7, 400, 999])
    g = torch.Generator().manual_seed(1)
    eps_hat = noise + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    losses = ddpm.training_losses(fixed_model(torch.cat([eps_hat, v], 1)), x0, labels, noise=noise, t=t)

    ref = brute_schedule()
    beta, a_bar, coef1, coef2, post_var = (
        column(ref[k], t) for k in ("betas", "alpha_bar", "coef1", "coef2", "post_var_clipped")
    )
    x_t = a_bar.sqrt() * x0 + (1 - a_bar).sqrt() * noise
    x0_hat = (x_t - (1 - a_bar).sqrt() * eps_hat) / a_bar.sqrt()
    frac = (v + 1) / 2
    model_std = torch.exp(0.5 * (frac * beta.log() + (1 - frac) * post_var.log()))
    true = Normal(coef1 * x0 + coef2 * x_t, post_var.sqrt().expand_as(x0))
    model = Normal(coef1 * x0_hat + coef2 * x_t, model_std)
    expected = kl_divergence(true, model).flatten(1).mean(1) / math.log(2)

    torch.testing.assert_close(losses["vb"], expected, rtol=1e-6, atol=1e-6)
    assert (losses["vb"] > 0).all()
    torch.testing.assert_close(losses["mse"], ((eps_hat - noise) ** 2).flatten(1).mean(1))
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])


def test_vb_decoder_nll_at_t0_matches_scipy(ddpm):
    g = torch.Generator().manual_seed(2)
    # Data on the 8-bit grid, with both edge values present.
    x0 = torch.randint(0, 256, (B, C, H, W), generator=g).double() / 127.5 - 1
    x0[0, 0, 0, 0], x0[0, 0, 0, 1] = -1.0, 1.0
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    eps_hat = noise + 0.01 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.zeros(B, dtype=torch.long)
    losses = ddpm.training_losses(fixed_model(torch.cat([eps_hat, v], 1)), x0, torch.arange(B), noise=noise, t=t)

    ref = brute_schedule()
    beta, a_bar = ref["betas"][0], ref["alpha_bar"][0]
    x = x0.numpy()
    x_t = np.sqrt(a_bar) * x + np.sqrt(1 - a_bar) * noise.numpy()
    # At t=0 the posterior mean of x0_hat is x0_hat itself (coef1 = 1, coef2 = 0).
    mean = (x_t - np.sqrt(1 - a_bar) * eps_hat.numpy()) / np.sqrt(a_bar)
    frac = (v.numpy() + 1) / 2
    std = np.exp(0.5 * (frac * np.log(beta) + (1 - frac) * np.log(ref["post_var_clipped"][0])))
    upper = np.where(x >= 1.0, np.inf, x + 1 / 255)
    lower = np.where(x <= -1.0, -np.inf, x - 1 / 255)
    prob = norm.cdf(upper, mean, std) - norm.cdf(lower, mean, std)
    expected = (-np.log(prob)).reshape(B, -1).mean(1) / np.log(2)

    np.testing.assert_allclose(losses["vb"].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_perfect_model_has_zero_loss(ddpm, batch):
    x0, noise, labels = batch
    t = torch.tensor([1, 50, 500, 999])
    # v = -1 selects exactly the (clipped) true posterior log variance.
    out = torch.cat([noise, -torch.ones_like(noise)], 1)
    losses = ddpm.training_losses(fixed_model(out), x0, labels, noise=noise, t=t)
    assert torch.equal(losses["mse"], torch.zeros(B, dtype=torch.float64))
    assert losses["vb"].abs().max().item() < 1e-9


def test_vb_trains_only_variance_and_mse_only_eps(ddpm, batch):
    x0, noise, labels = batch
    t = torch.tensor([0, 3, 200, 900])
    g = torch.Generator().manual_seed(3)
    out = torch.randn(B, 2 * C, H, W, generator=g, dtype=torch.float64, requires_grad=True)

    vb = ddpm.training_losses(fixed_model(out), x0, labels, noise=noise, t=t)["vb"]
    (grad_vb,) = torch.autograd.grad(vb.sum(), out)
    assert torch.equal(grad_vb[:, :C], torch.zeros_like(grad_vb[:, :C]))
    assert grad_vb[:, C:].abs().sum() > 0

    mse = ddpm.training_losses(fixed_model(out), x0, labels, noise=noise, t=t)["mse"]
    (grad_mse,) = torch.autograd.grad(mse.sum(), out)
    assert torch.equal(grad_mse[:, C:], torch.zeros_like(grad_mse[:, C:]))
    assert grad_mse[:, :C].abs().sum() > 0


def test_ddpm_without_learned_sigma(batch):
    x0, noise, labels = batch
    objective = DDPMObjective(learn_sigma=False)
    losses = objective.training_losses(fixed_model(noise + 0.5), x0, labels, noise=noise)
    assert set(losses) == {"loss", "mse"}
    torch.testing.assert_close(losses["loss"], torch.full((B,), 0.25, dtype=torch.float64))
    with pytest.raises(ValueError, match="expects the model to output 3 channels"):
        objective.training_losses(fixed_model(torch.cat([noise, noise], 1)), x0, labels)


def test_ddpm_passes_integer_timesteps_to_model(ddpm, batch):
    x0, noise, labels = batch
    seen = {}

    def model(x_t, t, y):
        seen.update(x_t=x_t, t=t, y=y)
        return torch.cat([torch.zeros_like(x_t), torch.zeros_like(x_t)], 1)

    ddpm.training_losses(model, x0, labels, generator=torch.Generator().manual_seed(0))
    assert seen["t"].dtype == torch.long
    assert seen["t"].min() >= 0 and seen["t"].max() < 1000
    assert torch.equal(seen["y"], labels)


def test_seeded_generator_is_reproducible(ddpm, batch):
    x0, _, labels = batch
    out = torch.randn(B, 2 * C, H, W, dtype=torch.float64)
    for objective, model in ((ddpm, fixed_model(out)), (FlowObjective(), fixed_model(x0))):
        first, again, other = (
            objective.training_losses(model, x0, labels, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)
        )
        assert torch.equal(first["loss"], again["loss"])
        assert not torch.equal(first["loss"], other["loss"])


def test_flow_interpolant_target_and_timestep_scale(batch):
    x0, noise, labels = batch
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    seen = {}

    def model(x_t, t_model, y):
        seen.update(x_t=x_t, t=t_model)
        return torch.zeros_like(x_t)

    losses = FlowObjective().training_losses(model, x0, labels, noise=noise, t=t)
    tt = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x_t"], (1 - tt) * x0 + tt * noise)
    torch.testing.assert_close(seen["x_t"][0], x0[0])  # t = 0 is data
    torch.testing.assert_close(seen["x_t"][3], noise[3])  # t = 1 is noise
    torch.testing.assert_close(seen["t"], t * 1000)
    torch.testing.assert_close(losses["loss"], ((noise - x0) ** 2).flatten(1).mean(1))


def test_flow_perfect_model_has_zero_loss(batch):
    x0, noise, labels = batch
    losses = FlowObjective().training_losses(fixed_model(noise - x0), x0, labels, noise=noise)
    assert torch.equal(losses["loss"], torch.zeros(B, dtype=torch.float64))


def test_flow_logit_normal_times():
    objective = FlowObjective(time_sampling="logit_normal")
    t = objective.sample_timesteps(200_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert ((t > 0) & (t < 1)).all()
    assert t.mean().item() == pytest.approx(0.5, abs=3e-3)
    # Median of sigmoid(N(0, 1)) is 0.5; its quartiles are sigmoid(+-0.6745).
    upper_quartile = 1 / (1 + math.exp(-0.6745))
    assert torch.quantile(t[:100_000], 0.75).item() == pytest.approx(upper_quartile, abs=5e-3)
    shifted = FlowObjective(time_sampling="logit_normal", logit_mean=1.0, logit_std=0.5)
    t_shifted = shifted.sample_timesteps(100_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert t_shifted.median().item() == pytest.approx(1 / (1 + math.exp(-1.0)), abs=5e-3)


def test_flow_uniform_times():
    t = FlowObjective().sample_timesteps(100_000, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert ((t >= 0) & (t < 1)).all()
    assert t.mean().item() == pytest.approx(0.5, abs=5e-3)


def test_flow_rejects_bad_configuration(batch):
    with pytest.raises(ValueError, match="unknown time_sampling"):
        FlowObjective(time_sampling="cosine")
    x0, _, labels = batch
    with pytest.raises(ValueError, match="learn_sigma=True"):
        FlowObjective().training_losses(fixed_model(torch.cat([x0, x0], 1)), x0, labels)


def test_make_objective():
    ddpm = make_objective("ddpm", learn_sigma=False)
    assert isinstance(ddpm, DDPMObjective) and not ddpm.learn_sigma
    flow = make_objective("flow", time_sampling="logit_normal")
    assert isinstance(flow, FlowObjective) and flow.time_sampling == "logit_normal"
    with pytest.raises(ValueError, match="unknown objective 'edm'"):
        make_objective("edm")
