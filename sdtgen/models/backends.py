"""Four ways to compute softmax(q k^T / sqrt(D) + M) v with the spatial decay bias M.

- `math`: materialise M and the attention matrix; the readable reference, for tests.
- `sdpa`: PyTorch's scaled_dot_product_attention with M as a float `attn_mask`
  (fused kernels on CPU and GPU, gradients flow into M; memory O(B * H * N^2)).
- `folded`: M folded exactly into extra q / k features (sdtgen/models/folded.py), then
  SDPA with no mask: the fused / flash kernels, no N x N tensor, deterministic backward.
- `flex`: FlexAttention with a `score_mod` that adds the bias on the fly, so M is never
  materialised (compiled; forward and backward on GPU, forward only on CPU in torch 2.14).

All take q, k, v of shape (B, H, N, D), `lam` of shape (B or 1, H, N) or None (no bias),
and the (height, width) token grid in row-major order.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sdtgen.models.decay import decay_bias
from sdtgen.models.folded import MAX_FOLDED_HEAD_DIM, attention_folded, folded_head_dim, is_token_constant

BACKENDS = ("auto", "math", "sdpa", "flex", "folded")

Grid = tuple[int, int]


def attention_math(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor | None, grid: Grid
) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, N, N)
    if lam is not None:
        # Built in the scores' dtype: under bf16 autocast no (B, H, N, N) float32 tensor or conversion.
        scores = scores + decay_bias(lam.to(scores.dtype), grid)  # (B, H, N, N)
    return scores.softmax(dim=-1) @ v  # (B, H, N, D)


def attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor | None, grid: Grid
) -> torch.Tensor:
    mask = None if lam is None else decay_bias(lam.to(q.dtype), grid)  # (B or 1, H, N, N)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def flex_available() -> bool:
    """True when this torch ships FlexAttention (torch >= 2.5)."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


_compiled_flex: Callable | None = None


def _flex_attention() -> Callable:
    # FlexAttention is only fast (and only lean) when compiled; compile it once per process.
    global _compiled_flex
    if _compiled_flex is None:
        from torch.nn.attention.flex_attention import flex_attention

        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def attention_flex(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor | None, grid: Grid
) -> torch.Tensor:
    if (
        q.device.type == "cpu"
        and torch.is_grad_enabled()
        and (q.requires_grad or (lam is not None and lam.requires_grad))
    ):
        raise RuntimeError(
            "attention_backend='flex' cannot train on CPU: FlexAttention's backward is not supported "
            "on CPU in this torch. Use attention_backend='auto' or 'sdpa' for CPU training "
            "(flex stays available for CPU sampling under torch.no_grad())."
        )
    if lam is None:
        return _flex_attention()(q, k, v)
    width = grid[1]
    # A (1, H, N) fixed decay is expanded so the score_mod can index it by batch. Flex's
    # backward cannot differentiate two reads of one tensor, so the query and key sides
    # read two copies (B * H * N floats each, nothing like an N x N bias).
    lam_q = lam.expand(q.shape[0], -1, -1).float().contiguous()
    lam_kv = lam_q.clone()

    def add_decay(score, b, h, q_idx, kv_idx):
        distance = (q_idx // width - kv_idx // width).abs() + (q_idx % width - kv_idx % width).abs()
        return score + 0.5 * (lam_q[b, h, q_idx] + lam_kv[b, h, kv_idx]) * distance

    return _flex_attention()(q, k, v, score_mod=add_decay)


def attention_folded_or_mask(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor | None, grid: Grid
) -> torch.Tensor:
    """The folded backend; grids whose features would pass the kernels' head-size limit fall back
    to FlexAttention on CUDA (no N x N tensor) and to SDPA with the mask elsewhere."""
    if lam is not None and folded_head_dim(q.shape[-1], grid, is_token_constant(lam)) > MAX_FOLDED_HEAD_DIM:
        fallback = attention_flex if q.device.type == "cuda" and flex_available() else attention_sdpa
        return fallback(q, k, v, lam, grid)
    return attention_folded(q, k, v, lam, grid)


_BACKEND_FUNCTIONS = {
    "math": attention_math,
    "sdpa": attention_sdpa,
    "flex": attention_flex,
    "folded": attention_folded_or_mask,
}


# `auto` on CPU in fp32: the crossovers measured by benchmarks/bench_model.py (docs/benchmarks.md,
# "What auto picks"). Folding widens each head by up to 2 (h + w) features, so it pays only
# where the mask needs a gradient and its N x N traffic outweighs the wider kernel. A mask
# without gradient (fixed) stays on SDPA's fused kernel, and so does sdt-decomposed, whose
# row and column lines make small masks.
_CPU_FOLDED_FROM_TOKENS = {"learned-fixed": 256, "sdt": 1024}
# Training in bf16 on CPU, the plain matmul-softmax-matmul beats SDPA's CPU kernels for every
# variant, plain attention included, up to the largest grid measured; beyond it the fp32 rule
# holds (docs/benchmarks.md).
_CPU_BF16_MATH_UP_TO_TOKENS = 256


def resolve_backend(
    requested: str,
    variant: str,
    tokens: int,
    device: torch.device,
    training: bool = True,
    dtype: torch.dtype = torch.float32,
) -> str:
    """Pick the concrete backend for `auto`: the fastest measured path that supports the request.

    Without a bias, SDPA dispatches to flash / memory-efficient kernels and wins everywhere.
    With a bias on GPU, compiled FlexAttention (no N x N tensor; to be measured against
    `folded`, see benchmarks/gpu_run.sh). On CPU FlexAttention cannot train; SDPA with a
    float mask or the folded backend, whichever measured faster for the variant and size
    (without gradients, `training=False`, the mask stays on the fused kernel: SDPA). Training
    in bf16 on CPU (`dtype`, the attention inputs' dtype under autocast), the math path up to
    256 tokens for every variant, vanilla too. A fixed rule of the machine and the call, never a timing.
    """
    if requested not in BACKENDS:
        raise ValueError(f"Unknown attention backend {requested!r}; choose one of {', '.join(BACKENDS)}.")
    if requested != "auto":
        if requested == "flex" and not flex_available():
            raise RuntimeError("attention_backend='flex' needs torch >= 2.5 (FlexAttention); use 'sdpa'.")
        return requested
    if device.type == "cpu" and training and dtype == torch.bfloat16 and tokens <= _CPU_BF16_MATH_UP_TO_TOKENS:
        return "math"
    if variant == "vanilla":
        return "sdpa"
    if device.type == "cuda" and flex_available():
        return "flex"
    if device.type == "cpu" and training and tokens >= _CPU_FOLDED_FROM_TOKENS.get(variant, float("inf")):
        return "folded"
    return "sdpa"


def grid_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor | None, grid: Grid, backend: str
) -> torch.Tensor:
    """Attention over a token grid with an optional decay bias, through a concrete backend."""
    return _BACKEND_FUNCTIONS[backend](q, k, v, lam, grid)


def decomposed_grid_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, grid: Grid, backend: str
) -> torch.Tensor:
    """SDT's decomposed 2D decay: attention along each row, then along each column.

    Step 1 attends within every row with the horizontal decay |c_i - c_j|; step 2 attends
    within every column with the vertical decay |r_i - r_j|, using the same q and k and the
    step-1 output as values (docs/method.md, "Decomposed variant"). Each line is a 1 x L grid, so the
    same backends apply; lines are folded into the batch dimension.
    """
    batch, heads, _, dim = q.shape
    height, width = grid

    def to_rows(t: torch.Tensor) -> torch.Tensor:  # (B, H, N, *) -> (B * height, H, width, *)
        t = t.reshape(batch, heads, height, width, -1).transpose(1, 2)
        return t.reshape(batch * height, heads, width, -1)

    def to_cols(t: torch.Tensor) -> torch.Tensor:  # (B, H, N, *) -> (B * width, H, height, *)
        t = t.reshape(batch, heads, height, width, -1).permute(0, 3, 1, 2, 4)
        return t.reshape(batch * width, heads, height, -1)

    lam = lam.expand(batch, -1, -1).unsqueeze(-1)
    row_out = grid_attention(to_rows(q), to_rows(k), to_rows(v), to_rows(lam).squeeze(-1), (1, width), backend)
    row_out = row_out.reshape(batch, height, heads, width, dim).transpose(1, 2).reshape(batch, heads, -1, dim)
    col_out = grid_attention(to_cols(q), to_cols(k), to_cols(row_out), to_cols(lam).squeeze(-1), (1, height), backend)
    return col_out.reshape(batch, width, heads, height, dim).permute(0, 2, 3, 1, 4).reshape(batch, heads, -1, dim)
