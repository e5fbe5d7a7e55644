"""Exponential moving average of model weights, kept in fp32 whatever the training precision."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """An fp32 shadow copy of a model, updated after every optimizer step.

    ema <- d * ema + (1 - d) * weights, with d = decay, or with `warmup`
    d = min(decay, (1 + step) / (10 + step)) so that short runs are not dominated by the
    random initialisation (DiT uses a plain 0.9999 over 400K+ steps).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}.")
        self.decay = decay
        self.warmup = warmup
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend in `model`'s current weights; `step` counts completed optimizer steps from 0."""
        decay = self.decay_at(step)
        shadow = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            if param.requires_grad:
                shadow[name].lerp_(param.detach().float(), 1.0 - decay)
