"""The spatial decay folded exactly into q and k, so plain attention kernels run SDT.

The decay bias M[i, j] = 0.5 * (lam_i + lam_j) * d(i, j) (sdtgen/models/decay.py) is low
rank on an integer grid. Along one axis of S positions, with a_i the token's coordinate,

    |a_i - a_j| = sum_s [a_i == s] * |s - a_j|

a one-hot of a_i against a column of the axis's distance table: rank S, and every term is
either 0 or one small integer, so nothing cancels (the form a + b - 2 * min(a, b) would
subtract large numbers, which bf16 cannot afford). Summing the two axes gives
d(i, j) = onehot(i) . table(j) with F = height + width features per token (an axis of size
1 contributes nothing and is dropped). Then

    M[i, j] = [0.5 lam_i onehot(i), table(i)] . [table(j), 0.5 lam_j onehot(j)]

so appending 2F features to each query and key (and zeros to each value, since fused
kernels want equal head sizes) turns softmax(q k^T / sqrt(D) + M) v into plain attention
with no mask, computed by SDPA's fused CPU kernel or by flash / cuDNN / memory-efficient
kernels on GPU. The gradient of lam flows back through the appended features: no N x N
tensor, no reduction beyond attention's own backward, as deterministic as vanilla
attention. A decay that is the same for every token (fixed, learned-fixed) folds at half
the width: M[i, j] = [lam onehot(i)] . [table(j)].

The idea of folding a low-rank bias into q and k is FlashBias's (Wu et al., 2025); the
exact integer factorisation of the Manhattan distance is ours (docs/method.md).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

Grid = tuple[int, int]

# Head sizes the fused kernels take: flash attention (CPU and CUDA) and cuDNN stop at 256.
MAX_FOLDED_HEAD_DIM = 256
# Kernels want head sizes that are multiples of 8; zero features change nothing.
_ALIGN = 8


@functools.lru_cache(maxsize=32)
def distance_factors(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(onehot, table), each (N, F) float32, with onehot @ table.T == the Manhattan distance."""
    with torch.inference_mode(False):  # cached tensors must be usable by later training steps
        index = torch.arange(height * width, device=device)
        onehots, tables = [], []
        for coordinate, size in ((index // width, height), (index % width, width)):
            if size == 1:
                continue
            positions = torch.arange(size, device=device)
            onehots.append((coordinate[:, None] == positions).float())
            tables.append((coordinate[:, None] - positions).abs().float())
        if not onehots:  # a single token: no distances at all
            return torch.zeros(1, 0, device=device), torch.zeros(1, 0, device=device)
        return torch.cat(onehots, dim=1), torch.cat(tables, dim=1)


def is_token_constant(lam: torch.Tensor) -> bool:
    """True when lam holds one rate per head, broadcast over tokens (fixed, learned-fixed)."""
    return lam.shape[-1] == 1 or lam.stride(-1) == 0


def folded_head_dim(head_dim: int, grid: Grid, token_constant: bool) -> int:
    """Head size after folding: D plus F (constant decay) or 2F features, rounded up to 8."""
    features = sum(size for size in grid if size > 1) * (1 if token_constant else 2)
    return -(-(head_dim + features) // _ALIGN) * _ALIGN


def fold_decay(q: torch.Tensor, k: torch.Tensor, lam: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k of shape (B, H, N, D') with q' . k' = q . k / sqrt(D) + M (softmax scale 1)."""
    batch, heads, tokens, head_dim = q.shape
    onehot, table = (t.to(lam.dtype) for t in distance_factors(grid[0], grid[1], q.device))
    token_constant = is_token_constant(lam)
    # lam's rounding to q's dtype is the fold's only error: 2 ** -8 of M relative in bf16,
    # the same as a bf16 attention mask (each bias term is one rounded rate times an integer).
    if token_constant:
        q_extra = (lam[..., :1, None] * onehot).expand(batch, heads, tokens, -1)
        k_extra = table.expand(batch, heads, tokens, -1)
    else:
        lam_onehot = (0.5 * lam[..., None] * onehot).expand(batch, heads, tokens, -1)
        table = table.expand(batch, heads, tokens, -1)
        q_extra = torch.cat([lam_onehot, table], dim=-1)
        k_extra = torch.cat([table, lam_onehot], dim=-1)
    pad = folded_head_dim(head_dim, grid, token_constant) - head_dim - q_extra.shape[-1]
    q_folded = torch.cat([q * head_dim**-0.5, q_extra.to(q.dtype)], dim=-1)
    k_folded = torch.cat([k, k_extra.to(k.dtype)], dim=-1)
    return F.pad(q_folded, (0, pad)), F.pad(k_folded, (0, pad))


def attention_folded(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor | None, grid: Grid
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + M) v through SDPA with the decay folded into q and k."""
    if lam is None:
        return F.scaled_dot_product_attention(q, k, v)
    q_folded, k_folded = fold_decay(q, k, lam, grid)
    v_padded = F.pad(v, (0, q_folded.shape[-1] - v.shape[-1]))
    out = F.scaled_dot_product_attention(q_folded, k_folded, v_padded, scale=1.0)
    return out[..., : v.shape[-1]]
