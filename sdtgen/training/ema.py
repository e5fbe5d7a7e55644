"""Exponential moving average of model weights, kept in fp32 whatever the training precision."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from sdtgen.config import MAX_EMA_STD


def power_exponent(std: float) -> float:
    """The exponent gamma >= 0 of the power-function EMA whose relative std is `std` (EDM2, Karras et al. 2024).

    The averaging profile t^gamma over [0, T] has std / T = sqrt((g + 1) / ((g + 2)^2 (g + 3))); its
    largest real root in g is the exponent: g^3 + 7 g^2 + (16 - 1/std^2) g + (12 - 1/std^2) = 0.
    """
    if not 0 < std < MAX_EMA_STD:
        raise ValueError(f"The EMA's relative std must be in (0, {MAX_EMA_STD:.4f}), got {std}.")
    inverse = std**-2
    return float(np.roots([1.0, 7.0, 16.0 - inverse, 12.0 - inverse]).real.max())


class EMA:
    """An fp32 shadow copy of a model, updated after every optimizer step.

    ema <- d * ema + (1 - d) * weights, with d one of:
    - `std` given: EDM2's power-function EMA, d = (1 - 1 / (step + 1)) ** (gamma + 1) with gamma =
      power_exponent(std): at every step the average weighs the weights of step s by s^gamma, so
      its length is the fraction `std` of the run so far, whatever the run's length;
    - `warmup`: d = min(decay, (1 + step) / (10 + step)), DiT's short-run warm-up (a power function
      of exponent about 8, relative std 0.09, until it reaches `decay`);
    - else the constant `decay` (DiT uses 0.9999 over 400K+ steps).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = False, std: float | None = None) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}.")
        self.decay = decay
        self.warmup = warmup
        self.exponent = None if std is None else power_exponent(std)
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        if self.exponent is not None:
            return (1 - 1 / (step + 1)) ** (self.exponent + 1)
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend in `model`'s current weights; `step` counts completed optimizer steps from 0."""
        decay = self.decay_at(step)
        shadow = dict(self.model.named_parameters())
        for name, param in model.named_parameters():
            if param.requires_grad:
                shadow[name].lerp_(param.detach().float(), 1.0 - decay)
