"""DiT's input embeddings: patches, 2D sin-cos positions, timesteps and class labels."""

from __future__ import annotations

import math

import torch
from torch import nn


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """DiT's fixed 2D sin-cos position embedding, (grid_size ** 2, dim), row-major tokens.

    As in DiT (and MAE), the first half of the channels encodes the token's column and the
    second half its row, each as [sin(pos * w), cos(pos * w)] with w = 10000 ** (-2k / (dim / 2)).
    Computed in float64 like DiT's numpy version, then cast.
    """
    if dim % 4:
        raise ValueError(f"The sin-cos position embedding needs a width divisible by 4, got {dim}.")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows = torch.arange(grid_size, dtype=torch.float64).repeat_interleave(grid_size)
    cols = torch.arange(grid_size, dtype=torch.float64).repeat(grid_size)

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1).float()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal timestep features [cos(t * f), sin(t * f)], f_k = max_period ** (-k / (dim/2 - shift)).

    `freq_shift=0` is the original DiT; diffusers' DiT port uses `downscale_freq_shift=1`,
    a slightly different frequency spacing, so converted diffusers models carry 1.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches to tokens, row-major (DiT's `x_embedder`)."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (possibly fractional) timestep, then a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256, freq_shift: float = 0.0) -> None:
        super().__init__()
        self.frequency_size = frequency_size
        self.freq_shift = freq_shift
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(t, self.frequency_size, freq_shift=self.freq_shift)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class embeddings plus a null class (index num_classes) for classifier-free guidance.

    The null row exists when `dropout_prob > 0`. Unlike DiT, the embedder never drops
    labels itself: the trainer replaces labels by the null class with its own seeded
    generator (sdtgen.training), so the model stays deterministic and a run gives the same
    updates on any number of processes.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)
