"""The SDT attention against independent, brute-force statements of docs/method.md."""

import math

import pytest
import torch

from sdtgen.models.attention import ATTENTION_VARIANTS, SpatialDecayAttention, apply_rope_2d
from sdtgen.models.backends import (
    attention_flex,
    attention_math,
    attention_sdpa,
    decomposed_grid_attention,
    flex_available,
)
from sdtgen.models.decay import decay_bias, rmt_gammas

GRID = (3, 4)  # not square, to catch row / column mix-ups
TOKENS = GRID[0] * GRID[1]


def brute_force_manhattan(i: int, j: int, width: int) -> int:
    return abs(i // width - j // width) + abs(i % width - j % width)


def spec_sdt_bias(gate_logits: torch.Tensor, alpha: torch.Tensor, width: int) -> torch.Tensor:
    """M[b,h,i,j] = -|alpha_h * 0.5 * (G[i,h] + G[j,h]) * d(i,j)|, written out element by element."""
    batch, tokens, heads = gate_logits.shape
    G = torch.nn.functional.logsigmoid(gate_logits.double())
    bias = torch.zeros(batch, heads, tokens, tokens, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(tokens):
                for j in range(tokens):
                    d = brute_force_manhattan(i, j, width)
                    bias[b, h, i, j] = -abs(alpha[h].double() * 0.5 * (G[b, i, h] + G[b, j, h]) * d)
    return bias


def random_sdt(dim=16, heads=2, **kwargs) -> SpatialDecayAttention:
    torch.manual_seed(0)
    attn = SpatialDecayAttention(dim, heads, attention="sdt", **kwargs)
    with torch.no_grad():
        attn.gate.weight.normal_(0, 0.5)
        attn.gate.bias.normal_(0, 1.0)
        attn.alpha.copy_(torch.tensor([0.7, -1.3]))  # a negative alpha must still attenuate
    return attn


def test_sdt_bias_matches_the_spec_formula_and_is_a_pure_attenuation():
    attn = random_sdt()
    x = torch.randn(2, TOKENS, 16)
    bias = decay_bias(attn.log_decay(x), GRID).double()
    expected = spec_sdt_bias(attn.gate(x).detach(), attn.alpha.detach(), GRID[1])
    torch.testing.assert_close(bias, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(bias, bias.transpose(-1, -2))
    assert (bias <= 0).all()
    assert (bias.diagonal(dim1=-2, dim2=-1) == 0).all()
    assert (bias < -1e-3).sum() > 0.9 * bias.numel() - 2 * TOKENS * 2  # off-diagonal entries do decay


def test_constant_gates_reproduce_rmt_fixed_mask():
    heads = 4
    attn = SpatialDecayAttention(32, heads, attention="sdt")  # initialised at RMT's schedule
    x = torch.randn(3, TOKENS, 32)
    bias = decay_bias(attn.log_decay(x), GRID)
    gammas = [1 - 2 ** (-2 - 4 * h / heads) for h in range(heads)]
    assert gammas[0] == 0.75
    rmt = torch.tensor(
        [
            [[brute_force_manhattan(i, j, GRID[1]) * math.log(g) for j in range(TOKENS)] for i in range(TOKENS)]
            for g in gammas
        ]
    )
    for b in range(3):
        torch.testing.assert_close(bias[b], rmt.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rmt_gammas(heads), torch.tensor(gammas, dtype=torch.float64))


@pytest.mark.parametrize("variant", ["fixed", "learned-fixed"])
def test_data_independent_variants_start_at_rmt_mask(variant):
    attn = SpatialDecayAttention(32, 4, attention=variant)
    sdt = SpatialDecayAttention(32, 4, attention="sdt")
    x = torch.randn(2, TOKENS, 32)
    torch.testing.assert_close(
        decay_bias(attn.log_decay(x), GRID).expand(2, -1, -1, -1), decay_bias(sdt.log_decay(x), GRID)
    )


def brute_force_decomposed(q, k, v, lam, grid):
    """Row pass then column pass, one line at a time, with explicit 1D decay masks."""
    batch, heads, _, dim = q.shape
    height, width = grid
    lam = lam.expand(batch, -1, -1)
    scale = 1 / math.sqrt(dim)
    rows_out = torch.zeros_like(v)
    for r in range(height):
        idx = [r * width + c for c in range(width)]
        d = torch.tensor([[abs(a - b) for b in range(width)] for a in range(width)], dtype=q.dtype)
        m = 0.5 * (lam[:, :, idx, None] + lam[:, :, None, idx]) * d
        weights = (q[:, :, idx] @ k[:, :, idx].transpose(-1, -2) * scale + m).softmax(-1)
        rows_out[:, :, idx] = weights @ v[:, :, idx]
    out = torch.zeros_like(v)
    for c in range(width):
        idx = [r * width + c for r in range(height)]
        d = torch.tensor([[abs(a - b) for b in range(height)] for a in range(height)], dtype=q.dtype)
        m = 0.5 * (lam[:, :, idx, None] + lam[:, :, None, idx]) * d
        weights = (q[:, :, idx] @ k[:, :, idx].transpose(-1, -2) * scale + m).softmax(-1)
        out[:, :, idx] = weights @ rows_out[:, :, idx]
    return out


@pytest.mark.parametrize("backend", ["math", "sdpa"])
def test_decomposed_matches_brute_force_row_then_column(backend):
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 3, TOKENS, 8, dtype=torch.float64) for _ in range(3))
    lam = -torch.rand(2, 3, TOKENS, dtype=torch.float64)
    got = decomposed_grid_attention(q, k, v, lam, GRID, backend)
    torch.testing.assert_close(got, brute_force_decomposed(q, k, v, lam, GRID), rtol=1e-10, atol=1e-10)


def test_decomposed_differs_from_full_2d():
    torch.manual_seed(2)
    q, k, v = (torch.randn(1, 2, TOKENS, 8) for _ in range(3))
    lam = -torch.rand(1, 2, TOKENS)
    full = attention_math(q, k, v, lam, GRID)
    assert (decomposed_grid_attention(q, k, v, lam, GRID, "math") - full).abs().max() > 1e-3


def _run_backend(variant, backend, x, seed=0):
    torch.manual_seed(seed)
    attn = SpatialDecayAttention(16, 2, attention=variant, backend=backend)
    if variant in ("sdt", "sdt-decomposed"):
        with torch.no_grad():
            attn.gate.weight.normal_(0, 0.5)
    x = x.clone().requires_grad_(True)
    out = attn(x, GRID)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = {n: p.grad.clone() for n, p in attn.named_parameters()}
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_math_and_sdpa_agree_in_output_and_gradients(variant):
    x = torch.randn(2, TOKENS, 16)
    out_m, gx_m, g_m = _run_backend(variant, "math", x)
    out_s, gx_s, g_s = _run_backend(variant, "sdpa", x)
    torch.testing.assert_close(out_s, out_m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_s, gx_m, rtol=1e-4, atol=1e-5)
    for name in g_m:
        torch.testing.assert_close(g_s[name], g_m[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["sdt", "sdt-decomposed", "learned-fixed"])
def test_gradients_reach_the_decay_parameters(variant):
    _, _, grads = _run_backend(variant, "sdpa", torch.randn(2, TOKENS, 16))
    names = ["gate.weight", "gate.bias", "alpha"] if variant.startswith("sdt") else ["decay_logit"]
    for name in names:
        assert grads[name].abs().sum() > 1e-6, name


@pytest.mark.skipif(not flex_available(), reason="FlexAttention needs torch >= 2.5")
def test_flex_forward_agrees_with_math():
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 2, 16, 16) for _ in range(3))
    lam = -torch.rand(2, 2, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            attention_flex(q, k, v, lam, (4, 4)), attention_math(q, k, v, lam, (4, 4)), rtol=1e-4, atol=1e-5
        )
        torch.testing.assert_close(
            attention_flex(q, k, v, None, (4, 4)), attention_sdpa(q, k, v, None, (4, 4)), rtol=1e-4, atol=1e-5
        )


def test_flex_training_on_cpu_fails_clearly():
    q = torch.randn(1, 1, 4, 16, requires_grad=True)
    with pytest.raises(RuntimeError, match="cannot train on CPU"):
        attention_flex(q, q, q, -torch.rand(1, 1, 4), (2, 2))


def test_rope_scores_depend_only_on_relative_offset():
    torch.manual_seed(4)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    grid = (5, 5)
    qs, ks = apply_rope_2d(q.expand(1, 1, 25, 8), grid), apply_rope_2d(k.expand(1, 1, 25, 8), grid)
    scores = (qs @ ks.transpose(-1, -2))[0, 0]
    # tokens (0,0)->(1,2) and (2,1)->(3,3) share the offset (1, 2)
    torch.testing.assert_close(scores[0 * 5 + 0, 1 * 5 + 2], scores[2 * 5 + 1, 3 * 5 + 3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(qs.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 25), rtol=1e-5, atol=1e-6)


def test_lepe_starts_at_identity_and_learns():
    torch.manual_seed(5)
    x = torch.randn(2, TOKENS, 16)
    plain = SpatialDecayAttention(16, 2, attention="sdt")
    with_lepe = SpatialDecayAttention(16, 2, attention="sdt", lepe=True)
    with_lepe.load_state_dict(plain.state_dict(), strict=False)
    torch.testing.assert_close(with_lepe(x, GRID), plain(x, GRID))
    with_lepe(x, GRID).square().sum().backward()
    assert with_lepe.lepe.weight.grad.abs().sum() > 0


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="Unknown attention variant 'sdtt'"):
        SpatialDecayAttention(16, 2, attention="sdtt")
    with pytest.raises(ValueError, match="Unknown attention backend"):
        SpatialDecayAttention(16, 2, backend="cuda")
    with pytest.raises(ValueError, match="not divisible"):
        SpatialDecayAttention(18, 4)


def test_bf16_bias_is_built_in_bf16_within_a_few_roundings():
    """Under bf16 the math and SDPA paths build M in bf16 (no float32 N x N tensor): each element
    is within three bf16 roundings (rates, sum, product) of the exact bias, and attention through
    it is as accurate as through the float32 bias rounded once."""
    grid = (8, 8)
    generator = torch.Generator().manual_seed(5)
    lam = -2 * torch.rand(2, 4, 64, generator=generator)
    bias = decay_bias(lam.bfloat16(), grid)
    assert bias.dtype == torch.bfloat16
    exact = decay_bias(lam.double(), grid)
    assert ((bias.double() - exact).abs() <= 3 * 2.0**-8 * exact.abs() + 1e-12).all()

    q, k, v = (torch.randn(2, 4, 64, 32, generator=generator) for _ in range(3))
    reference = attention_math(q.double(), k.double(), v.double(), lam.double(), grid)
    bf16 = [t.bfloat16() for t in (q, k, v)]
    scores = (bf16[0] @ bf16[1].transpose(-2, -1)) / math.sqrt(32) + decay_bias(lam, grid).bfloat16()
    old_error = (scores.softmax(-1) @ bf16[2]).double().sub(reference).abs().max().item()
    for backend in (attention_math, attention_sdpa):
        error = (backend(*bf16, lam, grid).double() - reference).abs().max().item()
        assert error <= 1.5 * old_error and error < 0.05, backend.__name__
