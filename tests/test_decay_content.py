"""The content-dependence statistics of sdtgen/decay_content.py against brute-force loops and known decays."""

import math

import pytest
import torch

from sdtgen.decay_content import content_dependence, object_background_stats, token_object_mask
from sdtgen.decay_maps import block_log_decays, collect_log_decay
from tiny_runs import random_model


def brute_force_stats(lam: torch.Tensor, mask: torch.Tensor) -> dict[str, list[float]]:
    """The module docstring's definitions, one image, head and token at a time."""
    batch, heads, tokens = lam.shape
    out = {"contrast": [], "eta_squared": [], "spread": [], "mean_lam": []}
    for h in range(heads):
        contrasts, between, total, stds, everything = [], 0.0, 0.0, [], []
        for b in range(batch):
            values = [float(lam[b, h, i]) for i in range(tokens)]
            obj = [v for v, m in zip(values, mask[b], strict=True) if m]
            bg = [v for v, m in zip(values, mask[b], strict=True) if not m]
            mean = sum(values) / tokens
            stds.append(math.sqrt(sum((v - mean) ** 2 for v in values) / tokens))
            everything += values
            if obj and bg:
                m_obj, m_bg = sum(obj) / len(obj), sum(bg) / len(bg)
                contrasts.append(m_obj - m_bg)
                between += len(obj) * (m_obj - mean) ** 2 + len(bg) * (m_bg - mean) ** 2
                total += sum((v - mean) ** 2 for v in values)
        grand = sum(everything) / len(everything)
        out["contrast"].append(sum(contrasts) / len(contrasts))
        out["eta_squared"].append(between / total if total else 0.0)
        out["spread"].append(sum(stds) / len(stds) / abs(grand))
        out["mean_lam"].append(grand)
    return out


def test_statistics_match_brute_force_and_skip_single_group_images():
    generator = torch.Generator().manual_seed(0)
    lam = -torch.rand(5, 3, 16, generator=generator) * 2
    mask = torch.rand(5, 16, generator=generator) > 0.6
    mask[1] = True  # all object: no background to compare with
    mask[3] = False  # all background
    stats = object_background_stats(lam, mask)
    expected = brute_force_stats(lam, mask)
    for key, values in expected.items():
        torch.testing.assert_close(stats[key], torch.tensor(values, dtype=torch.float64), rtol=1e-9, atol=1e-12)


def test_a_decay_that_is_a_function_of_the_mask_has_eta_squared_one_and_a_constant_one_zero():
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 5:9] = True
    follows = torch.where(mask, -0.1, -0.7)[:, None, :].expand(2, 2, 16)
    stats = object_background_stats(follows, mask)
    torch.testing.assert_close(stats["contrast"], torch.full((2,), 0.6, dtype=torch.float64))
    torch.testing.assert_close(stats["eta_squared"], torch.ones(2, dtype=torch.float64))
    constant = object_background_stats(torch.full((2, 2, 16), -0.3), mask)
    assert constant["contrast"].abs().max() < 1e-12 and constant["eta_squared"].eq(0).all()
    assert constant["spread"].eq(0).all()
    with pytest.raises(ValueError, match="both object and background"):
        object_background_stats(follows, torch.ones(2, 16, dtype=torch.bool))


def test_token_mask_counts_object_pixels_per_patch():
    images = -torch.ones(1, 1, 32, 32)
    images[0, 0, 0:4, 0:4] = 1.0  # token (0, 0) of an 8 x 8 grid: all object
    images[0, 0, 4:6, 4:8] = 1.0  # token (1, 1): half object -> object at threshold 0.5
    images[0, 0, 8:9, 8:12] = 1.0  # token (2, 2): a quarter -> background
    mask = token_object_mask(images, (8, 8)).view(8, 8)
    assert mask.sum() == 2 and mask[0, 0] and mask[1, 1] and not mask[2, 2]
    assert token_object_mask(images, (16, 16)).sum() == 4 + 2 + 2  # 2 x 2 patches at 256 tokens


def test_hooked_log_decays_are_the_models_own():
    model = random_model("flow", in_channels=1, attention="sdt")
    x = torch.randn(3, 1, 16, 16)
    timesteps = torch.tensor([200.0, 500.0, 900.0])
    lams = block_log_decays(model, x, timesteps, torch.tensor([1, 2, 3]))
    assert len(lams) == 1 and lams[0].shape == (3, 2, 16)
    for i in range(3):  # one latent at a time
        (single,) = collect_log_decay(model, x[i : i + 1], timestep=float(timesteps[i]), label=i + 1)
        torch.testing.assert_close(lams[0][i], single)


def test_content_dependence_rows_fixed_decay_has_no_contrast():
    images = -torch.ones(4, 1, 32, 32)
    images[:, :, 8:24, 8:24] = 1.0
    latents = torch.randn(4, 1, 16, 16)
    labels = torch.arange(4)
    fixed = content_dependence(
        random_model("flow", in_channels=1, attention="fixed"), latents, images, labels, [0.1, 0.9]
    )
    assert len(fixed) == 2 * 1 * 2  # levels x blocks x heads
    assert all(abs(r["contrast"]) < 1e-12 and r["eta_squared"] == 0 for r in fixed)
    gated = content_dependence(random_model("flow", in_channels=1, attention="sdt"), latents, images, labels, [0.5])
    assert all(r["contrast"] != 0 and 0 < r["eta_squared"] <= 1 for r in gated)
    with pytest.raises(ValueError, match="no spatial decay"):
        content_dependence(random_model("flow", in_channels=1, attention="vanilla"), latents, images, labels, [0.5])
