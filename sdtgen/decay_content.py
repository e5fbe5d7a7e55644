"""Is a trained decay content-dependent? Object versus background log decay, measured.

SDT's gate gives every token its own log decay rate lam <= 0 (sdtgen/models/attention.py):
near 0 lets attention from and to that token reach far, very negative keeps it local. A
fixed decay gives every token of a head the same lam. On the built-in silhouettes the
object mask is free (white pixels), so the question "does the decay follow content?" has a
number: run a trained model on noised training latents at a chosen noise level, read each
block's lam per head and token, and compare object tokens with background tokens:

- `contrast`: mean lam over object tokens minus mean lam over background tokens, averaged
  over images (0 for a fixed decay; > 0: object tokens reach farther);
- `eta_squared`: the share of lam's token-to-token variance (within images) that the
  object / background split explains (1: lam is a function of the mask; 0: unrelated);
- `spread`: the within-image standard deviation of lam, relative to its mean |lam| (how
  much the decay varies over the image at all, whatever drives it);
- `mean_lam`: the average lam (the head's overall reach at this noise level).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdtgen.decay_maps import block_log_decays
from sdtgen.diffusion.flow import FlowObjective


def token_object_mask(images: torch.Tensor, grid: tuple[int, int], threshold: float = 0.5) -> torch.Tensor:
    """(B, tokens) bool: a token is "object" when at least `threshold` of its pixels are.

    `images` are (B, 1, H, W) in [-1, 1], white (> 0) object on black; the token grid is
    the row-major patch grid of the model (each token covers H / rows x W / cols pixels).
    """
    foreground = (images[:, :1] > 0).float()
    fraction = F.adaptive_avg_pool2d(foreground, grid)  # exact averages: the grid divides the image
    return (fraction >= threshold).flatten(1)


def object_background_stats(lam: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four statistics of the module docstring for lam (B, H, N) and mask (B, N), each (H,).

    Images whose mask is all object or all background are left out of `contrast` and
    `eta_squared` (they have no second group); a head whose lam is constant within every
    image has `eta_squared` 0.
    """
    lam = lam.double()
    obj = mask[:, None, :].double()  # (B, 1, N)
    n_obj = obj.sum(-1)  # (B, 1)
    n_bg = (1 - obj).sum(-1)
    both = ((n_obj > 0) & (n_bg > 0)).squeeze(-1)  # images with both groups
    if not both.any():
        raise ValueError("No image has both object and background tokens; cannot compare them.")
    mean_obj = (lam * obj).sum(-1) / n_obj.clamp(min=1)  # (B, H)
    mean_bg = (lam * (1 - obj)).sum(-1) / n_bg.clamp(min=1)
    image_mean = lam.mean(-1)  # (B, H)
    total_ss = ((lam - image_mean[..., None]) ** 2).sum(-1)  # (B, H)
    between_ss = n_obj * (mean_obj - image_mean) ** 2 + n_bg * (mean_bg - image_mean) ** 2
    total = total_ss[both].sum(0)
    # A constant lam leaves only rounding in total (~1e-30): call anything that small "no variance".
    varies = total > 1e-18 * lam.shape[-1] * int(both.sum())
    eta_squared = torch.where(varies, between_ss[both].sum(0) / total.clamp(min=1e-300), torch.zeros_like(total))
    within_std = lam.std(-1, correction=0).mean(0)
    mean_lam = lam.mean((0, 2))
    return {
        "contrast": (mean_obj - mean_bg)[both].mean(0),
        "eta_squared": eta_squared,
        "spread": within_std / mean_lam.abs().clamp(min=1e-12),
        "mean_lam": mean_lam,
    }


@torch.no_grad()
def content_dependence(
    model,
    latents: torch.Tensor,
    images: torch.Tensor,
    labels: torch.Tensor,
    noise_levels: list[float],
    seed: int = 0,
    batch_size: int = 100,
) -> list[dict]:
    """Object / background statistics of every block and head of a flow model at each noise level.

    `latents` are the model-space (scaled) latents of `images` (B, 1, H, W) in [-1, 1] with
    `labels`; the same noise (drawn from `seed`) is used at every level, x_t = (1 - t) x0 + t eps.
    Returns one row per (noise level, block, head): {"t", "block", "head", and the statistics}.
    """
    model.eval()
    device = next(model.parameters()).device
    mask = token_object_mask(images, model.grid)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    rows = []
    for level in noise_levels:
        per_block: list[list[torch.Tensor]] = [[] for _ in model.blocks]
        for start in range(0, len(latents), batch_size):
            x0 = latents[start : start + batch_size]
            t = torch.full((len(x0),), float(level))
            xt = FlowObjective.interpolate(x0, noise[start : start + batch_size], t)
            timesteps = t.to(device) * FlowObjective.timestep_scale
            lams = block_log_decays(model, xt.to(device), timesteps, labels[start : start + batch_size].to(device))
            for block, lam in enumerate(lams):
                per_block[block].append(lam)
        for block, parts in enumerate(per_block):
            stats = object_background_stats(torch.cat(parts), mask)
            for head in range(len(stats["contrast"])):
                rows.append({"t": level, "block": block, "head": head, **{k: float(v[head]) for k, v in stats.items()}})
    return rows
