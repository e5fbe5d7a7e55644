"""Pinned outputs: a few numbers of a tiny model's forward pass, of one sampling trajectory and of
one metrics computation, written down once and compared to about 1e-4.

The other tests check relations (SDT equals fixed at init, a converted DiT matches diffusers,
the sampler agrees with an exact ODE solution); a relation survives a silent change of an
initialisation, a default or a scheduler setting, which these numbers do not. A change that
moves them on purpose updates them, and says why in its commit.
"""

from __future__ import annotations

import pytest
import torch

from sdtgen.diffusion.sampling import Guidance, denoise, make_scheduler, sample_generators
from sdtgen.evaluation.metrics import metrics_from_features
from sdtgen.models.dit import SDTDiT


def tiny_sdt(learn_sigma: bool) -> SDTDiT:
    """A 2-block SDT model, 4 x 4 tokens: DiT's initialisation from seed 0, then every trainable
    weight moved by seeded noise, so that the zero-initialised layers (adaLN-Zero, the final
    layer, the decay gate) take part and the output depends on every one of them."""
    torch.manual_seed(0)
    model = SDTDiT(
        input_size=8,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        learn_sigma=learn_sigma,
        attention="sdt",
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def test_sdt_forward_is_pinned():
    model = tiny_sdt(learn_sigma=True)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x, torch.tensor([10.0, 500.0]), torch.tensor([3, 10]))  # 10: the null class
    # Channels 0, 2 (the prediction) and 4, 6 (the learned variance) of the bottom-right pixel.
    expected = torch.tensor([[-0.216331, 0.0820272, -0.254178, -0.12958], [-0.132285, -0.0987586, -0.22586, -0.245458]])
    torch.testing.assert_close(out[:, ::2, -1, -1], expected, rtol=1e-4, atol=1e-5)


def test_dpm_solver_trajectory_is_pinned():
    """Flow DPM-Solver++ (the built-in run's sampler), 6 steps with guidance, from `denoise`'s own noise.

    Seed 1, not 0, so that the samples' seeds depend on SEED_STRIDE.
    """
    model = tiny_sdt(learn_sigma=False)
    scheduler = make_scheduler("flow", "dpm++", learn_sigma=False)
    latents = denoise(
        model,
        scheduler,
        torch.tensor([3, 7]),
        steps=6,
        guidance=Guidance(2.0),
        generator=sample_generators(1, [0, 1]),
    )
    expected = torch.tensor([[-0.140748, -0.91873, 2.19772, -0.994289], [0.383644, -1.52012, 0.268412, 0.248994]])
    torch.testing.assert_close(latents[:, :, -1, -1], expected, rtol=1e-4, atol=1e-5)


def test_metrics_from_features_are_pinned():
    """FID, class accuracy (and IS / KID on the way) from fixed features and logits, through
    `metrics_from_features`, the half of `compute_metrics` that follows feature extraction."""
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(300, 8, generator=generator)
    features = 0.8 * torch.randn(200, 8, generator=generator) + 0.1
    labels = torch.randint(0, 10, (200,), generator=generator)
    logits = torch.randn(200, 10, generator=generator) + 1.5 * torch.nn.functional.one_hot(labels, 10)
    metrics = metrics_from_features(features, logits, reference, labels, kid_subset_size=100)
    assert metrics["fid"] == pytest.approx(0.678722, rel=1e-4)
    assert metrics["class_accuracy"] == pytest.approx(0.51)
    per_class = metrics["class_accuracy_per_class"]
    assert (per_class["bear"], per_class["zebra"], metrics["class_counts"]["giraffe"]) == pytest.approx(
        (9 / 19, 13 / 19, 27)
    )
    assert (metrics["is"], metrics["kid"]) == pytest.approx((1.573885, 0.1011357), rel=1e-4)
