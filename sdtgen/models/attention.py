"""Self-attention with a learned, content-dependent 2D spatial decay (SDT) and its ablations.

Variants (docs/method.md):

| variant          | bias M                                         | learnable decay params |
| vanilla          | none (plain DiT)                               | none                   |
| fixed            | d(i, j) * log(gamma_h), RMT's schedule         | none                   |
| learned-fixed    | d(i, j) * log(sigmoid(b_h))                    | b_h                    |
| sdt              | -|alpha_h * 0.5 * (G_i + G_j) * d(i, j)|       | gate Linear(C, H), alpha_h |
| sdt-decomposed   | the same, along rows then along columns        | gate Linear(C, H), alpha_h |

with G = logsigmoid(gate(x)), the gate reading the attention input (the block's
normalised, modulated tokens).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from sdtgen.models.backends import decomposed_grid_attention, grid_attention, resolve_backend
from sdtgen.models.decay import rmt_gammas

ATTENTION_VARIANTS = ("vanilla", "fixed", "learned-fixed", "sdt", "sdt-decomposed")
DECAY_VARIANTS = tuple(variant for variant in ATTENTION_VARIANTS if variant != "vanilla")  # those with a decay
CONTENT_GATED = ("sdt", "sdt-decomposed")


@functools.lru_cache(maxsize=16)
def _rope_angles(height: int, width: int, head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Axial 2D RoPE: the first half of each head rotates with the row, the second with the column.
    quarter = head_dim // 4
    freqs = 10000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)
    cols = torch.arange(width, dtype=torch.float64).repeat(height)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)  # (N, D/2)
    with torch.inference_mode(False):
        return angles.cos().float().to(device), angles.sin().float().to(device)


def apply_rope_2d(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Rotate pairs (x[2k], x[2k+1]) of (B, H, N, D) by the token's row / column angles."""
    cos, sin = _rope_angles(grid[0], grid[1], x.shape[-1], x.device)
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class SpatialDecayAttention(nn.Module):
    """Multi-head self-attention over a token grid with one of the decay variants.

    Parameter names follow DiT's (`qkv`, `proj`) so plain DiT checkpoints load directly.

    Args:
        dim: token width C.
        num_heads: H; the head size is C / H.
        attention: one of ATTENTION_VARIANTS.
        backend: one of sdtgen.models.backends.BACKENDS ("auto" picks per call).
        decay_init, decay_range: RMT's schedule gamma_h = 1 - 2 ** (-init - range * h / H).
        decay_scale_init: multiplies the initial log decay: 1.0 trains from scratch; a small
            value (e.g. 1e-4) warm-starts from a plain DiT with a near-zero but trainable decay.
        rope: add axial 2D rotary position embedding to q and k.
        lepe: add a depth-wise 5x5 convolution of v to the output (RMT's LePE).
        qk_norm: normalise q and k per head (stabilises low-precision training).
        norm: "layernorm" or "rmsnorm", the kind of qk_norm (the model's norm).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attention: str = "sdt",
        backend: str = "auto",
        decay_init: float = 2.0,
        decay_range: float = 4.0,
        decay_scale_init: float = 1.0,
        rope: bool = False,
        lepe: bool = False,
        qk_norm: bool = False,
        norm: str = "layernorm",
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_VARIANTS:
            raise ValueError(f"Unknown attention variant {attention!r}; choose one of {', '.join(ATTENTION_VARIANTS)}.")
        if dim % num_heads:
            raise ValueError(f"Width {dim} is not divisible by {num_heads} heads.")
        if rope and (dim // num_heads) % 4:
            raise ValueError(f"2D RoPE needs a head size divisible by 4, got {dim // num_heads}.")
        resolve_backend(backend, "vanilla", 1, torch.device("cpu"))  # validate the name early
        self.num_heads = num_heads
        self.attention = attention
        self.backend = backend
        self.decay_init, self.decay_range, self.decay_scale_init = decay_init, decay_range, decay_scale_init
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rope = rope
        self.lepe = nn.Conv2d(dim, dim, 5, padding=2, groups=dim) if lepe else None
        head_dim = dim // num_heads
        norm_type = nn.RMSNorm if norm == "rmsnorm" else nn.LayerNorm
        self.q_norm = norm_type(head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = norm_type(head_dim, eps=1e-6) if qk_norm else None
        if attention == "fixed":
            self.register_buffer("log_gamma", torch.empty(num_heads), persistent=False)
        elif attention == "learned-fixed":
            self.decay_logit = nn.Parameter(torch.empty(num_heads))
        elif attention in CONTENT_GATED:
            self.gate = nn.Linear(dim, num_heads)
            self.alpha = nn.Parameter(torch.empty(num_heads))
        self.reset_decay_parameters()

    @torch.no_grad()
    def reset_decay_parameters(self) -> None:
        """Initialise the decay so every variant starts at RMT's fixed schedule (times the scale).

        `sdt` starts with a zero gate weight and bias logit(gamma_h), so G = log(gamma_h) for
        every token and the model equals `fixed` exactly at step 0 (our choice, docs/method.md,
        "Initialisation"); training then makes the decay content-dependent. Called again by the
        model after its generic weight initialisation, which would otherwise overwrite this.
        """
        log_gamma = torch.log(rmt_gammas(self.num_heads, self.decay_init, self.decay_range))
        if self.attention == "fixed":
            self.log_gamma.copy_(log_gamma * self.decay_scale_init)
        elif self.attention == "learned-fixed":
            # logsigmoid(b) = scale * log(gamma)  <=>  b = logit(gamma ** scale)
            scaled = torch.exp(log_gamma * self.decay_scale_init)
            self.decay_logit.copy_(torch.log(scaled) - torch.log1p(-scaled))
        elif self.attention in CONTENT_GATED:
            gamma = torch.exp(log_gamma)
            self.gate.weight.zero_()
            self.gate.bias.copy_(torch.log(gamma) - torch.log1p(-gamma))
            self.alpha.fill_(self.decay_scale_init)
        if self.lepe is not None:
            # Zero LePE starts the branch at identity (exact warm starts) yet receives gradient.
            self.lepe.weight.zero_()
            self.lepe.bias.zero_()

    def log_decay(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-token log decay rates lam <= 0, shape (B or 1, H, N); None for vanilla."""
        if self.attention == "vanilla":
            return None
        if self.attention == "fixed":
            return self.log_gamma.view(1, -1, 1).expand(1, -1, x.shape[1])  # (1, H, N)
        if self.attention == "learned-fixed":
            return F.logsigmoid(self.decay_logit).view(1, -1, 1).expand(1, -1, x.shape[1])  # (1, H, N)
        gate_log = F.logsigmoid(self.gate(x).float())  # (B, N, H), G <= 0
        return (self.alpha.abs().float()[:, None] * gate_log.transpose(1, 2)).to(x.dtype)  # (B, H, N)

    def resolved_backend(self, device: torch.device, tokens: int, dtype: torch.dtype = torch.float32) -> str:
        return resolve_backend(
            self.backend, self.attention, tokens, device, training=torch.is_grad_enabled(), dtype=dtype
        )

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        batch, tokens, dim = x.shape  # (B, N, C)
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # each (B, H, N, D)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = apply_rope_2d(q, grid), apply_rope_2d(k, grid)
        lam = self.log_decay(x)  # (B or 1, H, N), or None
        backend = self.resolved_backend(x.device, tokens, q.dtype)
        if self.attention == "sdt-decomposed":
            out = decomposed_grid_attention(q, k, v, lam, grid, backend)  # (B, H, N, D)
        else:
            out = grid_attention(q, k, v, lam, grid, backend)  # (B, H, N, D)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)  # (B, N, C)
        if self.lepe is not None:
            # v as a (B, C, h, w) image for the depth-wise convolution
            image = v.transpose(1, 2).reshape(batch, tokens, dim).transpose(1, 2).reshape(batch, dim, *grid)
            out = out + self.lepe(image).flatten(2).transpose(1, 2)  # (B, N, C)
        return self.proj(out)
