"""The recipe's ingredients: SwiGLU, RMSNorm, the velocity-direction loss, the dispersive loss and
REPA, each against a closed form or a brute-force computation, with one pinned value each, and
a run with all of them on that resumes exactly."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sdtgen import SDTDiT
from sdtgen.config import load_config
from sdtgen.diffusion.flow import FlowObjective
from sdtgen.evaluation.feature_net import default_weights_dir
from sdtgen.models.attention import ATTENTION_VARIANTS
from sdtgen.models.dit import Mlp, SwiGLU, make_norm
from sdtgen.runs import LOG_FILE, read_log
from sdtgen.training.representation import FrozenEncoder, dispersive_loss, load_encoder, repa_loss
from sdtgen.training.trainer import learning_rate
from test_training import assert_same_weights, final_weights, run

# A stand-in for DINOv2: a torch.hub folder whose entry builds a small random conv encoder
# (16 x 16 patch features of width 24). It is not the built-in feature network, and shares
# nothing with it.
HUBCONF = """
import torch
from torch import nn


def tiny_encoder():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 24, 4, stride=4), nn.GELU(), nn.Conv2d(24, 24, 1))
"""


def logged(run_dir: Path) -> list[dict]:
    """Every logged value but the speed."""
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_log(run_dir / LOG_FILE)]


@pytest.fixture
def hub_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "encoder_hub"
    folder.mkdir()
    (folder / "hubconf.py").write_text(HUBCONF)
    return folder


def test_swiglu_matches_its_formula_and_the_gelu_mlps_parameter_count():
    torch.manual_seed(0)
    swiglu, gelu = SwiGLU(192, 768), Mlp(192, 768)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert swiglu.hidden == 512
    assert abs(count(swiglu) - count(gelu)) / count(gelu) < 0.002
    x = torch.randn(2, 5, 192)
    w1, w2 = swiglu.w12.weight[:512], swiglu.w12.weight[512:]
    b1, b2 = swiglu.w12.bias[:512], swiglu.w12.bias[512:]
    expected = (F.silu(x @ w1.T + b1) * (x @ w2.T + b2)) @ swiglu.w3.weight.T + swiglu.w3.bias
    torch.testing.assert_close(swiglu(x), expected)
    assert swiglu(x)[0, 0, :3].tolist() == pytest.approx([-0.01489, 0.03476, -0.08646], abs=1e-4)


def test_rmsnorm_is_x_over_its_root_mean_square():
    x = torch.tensor([[3.0, 4.0, 0.0, 0.0]])
    expected = x / math.sqrt((9 + 16) / 4 + 1e-6)
    torch.testing.assert_close(make_norm("rmsnorm", 4, 1e-6)(x), expected)
    assert make_norm("rmsnorm", 4, 1e-6)(x)[0, 0].item() == pytest.approx(1.2, abs=1e-5)


def test_direction_loss_is_one_minus_the_cosine_over_channels():
    objective = FlowObjective(direction_weight=1.0)
    x0 = torch.zeros(2, 2, 1, 2)
    noise = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]], [[[1.0, 1.0]], [[1.0, -1.0]]]])  # target = noise
    answers = {
        "same": noise * 3,
        "opposite": -noise,
        "orthogonal": noise.flip(1) * torch.tensor([1.0, -1.0]).view(1, 2, 1, 1),
    }
    expected = {"same": 0.0, "opposite": 2.0}
    for name, answer in answers.items():
        out = objective.training_losses(
            lambda *_, answer=answer: answer, x0, torch.zeros(2), noise=noise, t=torch.ones(2) * 0.5
        )
        mse = (answer - noise).pow(2).flatten(1).mean(1)
        torch.testing.assert_close(out["mse"], mse)
        cos = F.cosine_similarity(answer, noise, dim=1).flatten(1).mean(1)
        torch.testing.assert_close(out["direction"], 1 - cos)
        torch.testing.assert_close(out["loss"], mse + 1 - cos)
        if name in expected:
            torch.testing.assert_close(out["direction"], torch.full((2,), expected[name]))
    # The default objective is plain MSE and reports nothing else.
    assert set(FlowObjective().training_losses(lambda *_: noise, x0, torch.zeros(2), noise=noise)) == {"loss", "mse"}


def test_dispersive_loss_matches_the_double_sum():
    torch.manual_seed(0)
    z = torch.randn(5, 3, 4)
    flat = z.flatten(1)
    brute = sum(
        math.exp(-((flat[i] - flat[j]) ** 2).sum().item() / flat.shape[1] / 0.5) for i in range(5) for j in range(5)
    )
    assert dispersive_loss(z, 0.5).item() == pytest.approx(math.log(brute / 25), abs=1e-5)
    assert dispersive_loss(z, 0.5).item() == pytest.approx(-1.44117, abs=1e-4)
    assert dispersive_loss(torch.ones(4, 6)).item() == pytest.approx(0.0, abs=1e-6)  # no spread: the highest value


def test_repa_loss_is_minus_the_mean_token_cosine():
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    torch.testing.assert_close(repa_loss(a, a), torch.full((2,), -1.0))
    expected = -torch.stack(
        [torch.stack([F.cosine_similarity(a[i, n], b[i, n], dim=0) for n in range(3)]).mean() for i in range(2)]
    )
    torch.testing.assert_close(repa_loss(a, b), expected)
    assert repa_loss(a, b)[0].item() == pytest.approx(0.08032, abs=1e-4)


def test_frozen_encoder_from_a_local_hub_folder(hub_folder):
    encoder = load_encoder(f"{hub_folder}:tiny_encoder")
    assert not any(p.requires_grad for p in encoder.parameters())
    images = torch.rand(2, 1, 32, 32) * 2 - 1  # gray images in [-1, 1], as the built-in VAE decodes
    features = encoder(images, (4, 4))
    assert features.shape == (2, 16, 24)
    # The same as running the module by hand: [0, 1], RGB, 224 px, ImageNet-normalised, pooled to the grid.
    x = F.interpolate(((images + 1) / 2).expand(-1, 3, -1, -1), size=224, mode="bicubic", align_corners=False)
    x = (x - encoder.mean) / encoder.std
    expected = F.adaptive_avg_pool2d(encoder.module(x), (4, 4)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(features, expected)


def test_the_judge_cannot_teach_and_missing_encoders_say_what_to_do(hub_folder, tmp_path):
    with pytest.raises(ValueError, match="judge never teaches"):
        load_encoder(f"{default_weights_dir()}:anything")
    with pytest.raises(ValueError, match="DIR:ENTRY"):
        load_encoder("dinov2_vitb14")
    with pytest.raises(ValueError, match="no hubconf.py"):
        load_encoder(f"{tmp_path}:tiny_encoder")
    with pytest.raises(FileNotFoundError, match="Clone the repository"):
        load_encoder("nobody/no-such-repo:dinov2_vitb14")
    with pytest.raises(ValueError, match="needs train.repa_encoder"):
        load_config(None, ["train.repa_weight=0.5"])
    assert isinstance(load_encoder(f"{hub_folder}:tiny_encoder"), FrozenEncoder)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("imagenet256_*.yaml")))
def test_the_imagenet_configs_train_with_dits_published_recipe(path):
    # Peebles & Xie (2023), section 5: AdamW (0.9, 0.999) at a constant 1e-4, no warm-up or decay, batch 256,
    # 400K steps, EMA 0.9999, DDPM with learned sigma, GELU, LayerNorm, sin-cos positions, guidance 1.5 everywhere.
    config = load_config(path, [])
    train, model = config.train, config.model
    assert (train.lr, tuple(train.betas), train.weight_decay, train.global_batch_size) == (1e-4, (0.9, 0.999), 0.0, 256)
    assert {learning_rate(config, step) for step in (0, 1, 200_000, 399_999)} == {1e-4}
    assert (train.max_steps, train.ema_decay, train.ema_warmup, train.grad_clip) == (400_000, 0.9999, False, None)
    assert (config.objective, model.mlp, model.norm, model.rope, model.qk_norm) == (
        "ddpm",
        "gelu",
        "layernorm",
        False,
        False,
    )
    assert (config.sample.guidance_scale, tuple(config.sample.guidance_interval)) == (1.5, (0.0, 1.0))
    assert model.preset.endswith("/2") and model.attention == path.stem.split("_")[1]


@pytest.mark.parametrize("attention", ATTENTION_VARIANTS)
def test_every_variant_and_backend_agree_with_swiglu_rmsnorm_and_qk_norm(attention):
    torch.manual_seed(0)
    model = SDTDiT.from_preset(
        "S/2",
        input_size=8,
        num_classes=10,
        depth=2,
        attention=attention,
        mlp="swiglu",
        norm="rmsnorm",
        qk_norm=True,
        rope=True,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 900.0]), torch.tensor([1, 10])
    model.set_attention_backend("math")
    reference = model(x, t, y)
    for backend in ("sdpa", "folded"):
        model.set_attention_backend(backend)
        torch.testing.assert_close(model(x, t, y), reference, rtol=1e-4, atol=1e-5)
    out, features = model(x, t, y, features_after=1)
    torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)
    assert features.shape == (2, 16, 384)


def test_a_run_with_every_ingredient_resumes_exactly(tmp_path, hub_folder):
    on = [
        "objective=flow",
        "model.mlp=swiglu",
        "model.norm=rmsnorm",
        "model.rope=true",
        "flow.direction_weight=1",
        "train.betas=[0.9,0.95]",
        "train.dispersive_weight=0.5",
        "train.repa_weight=0.5",
        f"train.repa_encoder={hub_folder}:tiny_encoder",
        "train.checkpoint_every=2",
    ]
    straight = run(tmp_path / "straight", "train.max_steps=4", *on)
    resumed = run(run(tmp_path / "resumed", "train.max_steps=2", *on), "train.max_steps=4", *on, "train.resume=latest")
    assert logged(resumed) == logged(straight)
    assert {"direction", "dispersive", "repa"} <= set(logged(straight)[0])
    assert_same_weights(final_weights(resumed, 4), final_weights(straight, 4))
    model = SDTDiT.from_pretrained(straight / "checkpoints" / "checkpoint-4" / "model")
    assert model.config.mlp == "swiglu" and model.config.norm == "rmsnorm" and model.config.projector_dim == 24
