"""The 2D spatial decay of SDT attention, as an additive bias on attention logits.

Every decay variant reduces to one per-token, per-head log decay rate `lam <= 0`
(shape (B or 1, heads, tokens)); the bias between tokens i and j on the patch grid is

    M[b, h, i, j] = 0.5 * (lam[b, h, i] + lam[b, h, j]) * d(i, j)

with d the Manhattan distance in grid steps. For SDT, lam = |alpha_h| * logsigmoid(F);
because logsigmoid <= 0 and d >= 0 this equals the spec's -|alpha_h * 0.5 * (G_i + G_j) * d|
(docs/method.md, "Attention"), value and gradient. For the fixed RMT decay lam = log(gamma_h),
which gives RMT's mask d(i, j) * log(gamma_h) exactly.
"""

from __future__ import annotations

import functools

import torch


def rmt_gammas(num_heads: int, init: float = 2.0, heads_range: float = 4.0) -> torch.Tensor:
    """RMT's per-head decay schedule gamma_h = 1 - 2 ** (-init - range * h / H).

    RMT uses init 2, so head 0 starts at 0.75 (a short reach) and later heads approach 1
    (a long reach). Returned in float64 so that log / logit of it are exact to fp32.
    """
    heads = torch.arange(num_heads, dtype=torch.float64)
    return 1.0 - 2.0 ** (-init - heads_range * heads / num_heads)


@functools.lru_cache(maxsize=32)
def grid_coordinates(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of each token of a row-major height x width grid (int64, (N,))."""
    # Cached tensors must be ordinary tensors even when first built under inference mode
    # (sampling), or a later training step could not save them for backward.
    with torch.inference_mode(False):
        index = torch.arange(height * width, device=device)
        return index // width, index % width


@functools.lru_cache(maxsize=32)
def manhattan_distance(
    height: int, width: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(N, N) matrix of |r_i - r_j| + |c_i - c_j| for a row-major token grid (exact in any float dtype:
    distances are small integers)."""
    rows, cols = grid_coordinates(height, width, device)
    with torch.inference_mode(False):
        distance = (rows[:, None] - rows[None, :]).abs() + (cols[:, None] - cols[None, :]).abs()
        return distance.to(dtype)


def decay_bias(lam: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Materialise the (B or 1, H, N, N) additive bias from log decay rates `lam` (.., H, N), in lam's dtype."""
    distance = manhattan_distance(grid[0], grid[1], lam.device, lam.dtype)
    # One broadcast add then one multiply: the cheapest way to build (lam_i + lam_j) * d / 2.
    return (lam.unsqueeze(-1) + lam.unsqueeze(-2)) * (0.5 * distance)
