"""The folded backend (the decay as extra q / k features) against brute force and the math backend."""

import pytest
import torch

from sdtgen.models.attention import ATTENTION_VARIANTS, SpatialDecayAttention
from sdtgen.models.backends import attention_math, attention_sdpa, grid_attention
from sdtgen.models.decay import decay_bias
from sdtgen.models.folded import MAX_FOLDED_HEAD_DIM, distance_factors, fold_decay, folded_head_dim

GRIDS = [(3, 4), (8, 8), (5, 2), (1, 6), (6, 1)]  # square, both non-square orientations, single lines


@pytest.mark.parametrize("grid", [(1, 1), (1, 5), (4, 1), (3, 4), (7, 5), (16, 16)])
def test_distance_factors_are_exact_and_cancellation_free(grid):
    onehot, table = distance_factors(*grid, torch.device("cpu"))
    height, width = grid
    brute = torch.tensor(
        [
            [abs(i // width - j // width) + abs(i % width - j % width) for j in range(height * width)]
            for i in range(height * width)
        ],
        dtype=torch.float32,
    )
    assert torch.equal(onehot @ table.T, brute)
    assert set(onehot.unique().tolist()) <= {0.0, 1.0} and (onehot.sum(1) == sum(s > 1 for s in grid)).all()
    assert (table >= 0).all()  # a sum of non-negative terms: nothing cancels
    assert onehot.shape[1] == sum(s for s in grid if s > 1)


def _module(variant: str, backend: str, dim: int = 32, heads: int = 2) -> SpatialDecayAttention:
    torch.manual_seed(0)
    attn = SpatialDecayAttention(dim, heads, attention=variant, backend=backend)
    with torch.no_grad():
        if variant in ("sdt", "sdt-decomposed"):
            attn.gate.weight.normal_(0, 0.5)
            attn.alpha.copy_(torch.tensor([0.7, -1.3]))
        if variant == "learned-fixed":
            attn.decay_logit.normal_(0, 1)
    return attn


def _forward_backward(variant: str, backend: str, x: torch.Tensor, grid) -> tuple[torch.Tensor, dict]:
    attn = _module(variant, backend)
    x = x.clone().requires_grad_(True)
    out = attn(x, grid)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), {"x": x.grad, **{n: p.grad for n, p in attn.named_parameters()}}


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("variant", ATTENTION_VARIANTS)
def test_folded_equals_math_in_output_and_every_gradient(variant, grid):
    x = torch.randn(3, grid[0] * grid[1], 32, generator=torch.Generator().manual_seed(1))
    out_math, grads_math = _forward_backward(variant, "math", x, grid)
    out_folded, grads_folded = _forward_backward(variant, "folded", x, grid)
    torch.testing.assert_close(out_folded, out_math, rtol=1e-5, atol=1e-6)
    assert grads_folded.keys() == grads_math.keys()
    for name, reference in grads_math.items():
        scale = reference.abs().max().item()
        assert (grads_folded[name] - reference).abs().max().item() <= 1e-5 * max(scale, 1e-3), name


@pytest.mark.parametrize("token_constant", [False, True])
def test_bf16_fold_error_is_bounded_by_one_rounding_of_the_rates(token_constant):
    """Stated bound: |M_folded - M| <= 2^-8 |M| elementwise in bf16 (as for a bf16 mask)."""
    grid = (16, 16)
    tokens = grid[0] * grid[1]
    generator = torch.Generator().manual_seed(2)
    if token_constant:
        lam = (-4 * torch.rand(1, 4, 1, generator=generator)).expand(1, 4, tokens)
    else:
        lam = -4 * torch.rand(2, 4, tokens, generator=generator)
    zeros = torch.zeros(lam.shape[0], 4, tokens, 64, dtype=torch.bfloat16)
    q_folded, k_folded = fold_decay(zeros, zeros, lam, grid)
    assert q_folded.dtype == torch.bfloat16
    folded = q_folded.double() @ k_folded.double().transpose(-1, -2)
    exact = decay_bias(lam.double(), grid)
    assert ((folded - exact).abs() <= 2.0**-8 * exact.abs() + 1e-12).all()


def test_bf16_folded_attention_is_as_accurate_as_a_bf16_mask():
    grid = (16, 16)
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 4, 256, 64, generator=generator) for _ in range(3))
    lam = -2 * torch.rand(2, 4, 256, generator=generator)
    reference = attention_math(q.double(), k.double(), v.double(), lam.double(), grid)
    bf16 = [t.bfloat16() for t in (q, k, v)]
    folded_error = (grid_attention(*bf16, lam, grid, "folded").double() - reference).abs().max().item()
    mask_error = (attention_sdpa(*bf16, lam.bfloat16(), grid).double() - reference).abs().max().item()
    assert folded_error <= 1.5 * mask_error and folded_error < 0.05


@pytest.mark.parametrize("variant", ["sdt", "learned-fixed"])
def test_folded_backward_is_deterministic(variant):
    x = torch.randn(4, 64, 32, generator=torch.Generator().manual_seed(4))
    _, first = _forward_backward(variant, "folded", x, (8, 8))
    _, second = _forward_backward(variant, "folded", x, (8, 8))
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_grids_past_the_head_size_limit_fall_back_and_stay_exact():
    grid = (1, 250)  # 8 + 2 * 250 features would pass the kernels' limit
    assert folded_head_dim(8, grid, token_constant=False) > MAX_FOLDED_HEAD_DIM
    generator = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 2, 250, 8, generator=generator) for _ in range(3))
    lam = -torch.rand(1, 2, 250, generator=generator)
    torch.testing.assert_close(
        grid_attention(q, k, v, lam, grid, "folded"), attention_math(q, k, v, lam, grid), rtol=1e-5, atol=1e-6
    )


def test_folded_head_sizes():
    assert folded_head_dim(64, (8, 8), token_constant=False) == 96  # 64 + 2 * 16
    assert folded_head_dim(64, (16, 16), token_constant=False) == 128
    assert folded_head_dim(64, (16, 16), token_constant=True) == 96
    assert folded_head_dim(72, (32, 32), token_constant=False) == 200  # 72 + 128
    assert folded_head_dim(64, (1, 16), token_constant=False) == 96  # a line: its length-1 axis adds nothing
