"""Representation losses on a block's tokens: dispersive loss (no teacher) and REPA (a frozen encoder).

- Dispersive loss (Wang & He, 2025, "Diffuse and Disperse"), the InfoNCE-L2 form: the log of
  the mean of exp(-||z_i - z_j||^2 / (d * tau)) over all pairs (i, j) of the batch, z_i a
  sample's flattened tokens and d their size. It pushes the batch's representations apart,
  needs no other model and costs one B x B distance matrix.
- REPA (Yu et al., 2025): a projector maps the block's tokens to a frozen encoder's width
  and the loss is minus their mean cosine similarity with the encoder's patch features of the
  clean image.

The frozen encoder is the user's (DINOv2 in the paper), loaded from a local torch.hub folder
or a hub name. The built-in feature network, which scores FID and class accuracy, is refused:
it is the judge and must not teach (docs/recipe.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sdtgen.evaluation.feature_net import AnimalsFeatureNet, default_weights_dir

JUDGE_REFUSED = "The built-in feature network scores FID and class accuracy; it cannot be the REPA encoder (the judge never teaches)."


def dispersive_loss(z: torch.Tensor, tau: float = 0.5) -> torch.Tensor:
    """log mean_{i,j} exp(-||z_i - z_j||^2 / (d tau)) of z (B, ...) flattened to (B, d); a scalar.

    The diagonal (i = j, distance 0) is part of the mean, as in the paper, so a batch of
    identical rows gives 0 and the loss is never above 0.
    """
    z = z.flatten(1).float()  # (B, d)
    distances = torch.cdist(z, z).pow(2) / z.shape[1]  # (B, B)
    return torch.logsumexp(-distances.flatten() / tau, dim=0) - 2 * torch.log(torch.tensor(float(z.shape[0])))


def repa_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample -mean_n cos(projected[b, n], target[b, n]) for (B, N, D) tokens; shape (B,)."""
    return -F.cosine_similarity(projected.float(), target.float(), dim=-1).mean(dim=1)


class FrozenEncoder(nn.Module):
    """A frozen image encoder giving (B, N, D) patch features on a (height, width) token grid.

    Takes images in [-1, 1] (B, C, H, W), repeats a gray channel to RGB, resizes them to
    `resolution`, normalises with `mean` / `std` (ImageNet's for DINOv2), and reads patch
    tokens from `forward_features(x)["x_norm_patchtokens"]` (DINOv2's API) or, for other
    modules, from `module(x)`, either (B, N, D) tokens or a (B, D, h, w) map. The features are
    pooled to the denoiser's token grid.
    """

    def __init__(
        self,
        module: nn.Module,
        resolution: int = 224,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        self.module = module.eval().requires_grad_(False)
        self.resolution = resolution
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = images.float().clamp(-1, 1).add(1).div(2)  # (B, C, H, W) in [0, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", align_corners=False)
        x = (x - self.mean) / self.std
        if hasattr(self.module, "forward_features"):
            out = self.module.forward_features(x)
            out = out["x_norm_patchtokens"] if isinstance(out, dict) else out
        else:
            out = self.module(x)
        if out.ndim == 3:  # (B, n, D) tokens on a square grid
            side = int(round(out.shape[1] ** 0.5))
            if side * side != out.shape[1]:
                raise ValueError(f"The REPA encoder gave {out.shape[1]} tokens, not a square grid.")
            out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], side, side)
        out = F.adaptive_avg_pool2d(out.float(), grid)  # (B, D, h, w)
        return out.flatten(2).transpose(1, 2)  # (B, N, D)


def load_encoder(spec: str) -> FrozenEncoder:
    """The frozen REPA encoder named by `spec`, "WHERE:ENTRY": WHERE a local torch.hub folder
    (holding hubconf.py, e.g. a clone of facebookresearch/dinov2 with its weights on disk) or a
    hub name OWNER/REPO already in torch.hub's cache (`torch.hub.get_dir()`). Nothing is
    downloaded here: a name that is not cached fails with how to provide it.
    """
    where, sep, entry = spec.rpartition(":")
    if not sep or not where or not entry:
        raise ValueError(
            f"train.repa_encoder={spec!r} must be DIR:ENTRY (a local torch.hub folder with hubconf.py) or "
            "OWNER/REPO:ENTRY (in torch.hub's cache), e.g. ./dinov2:dinov2_vitb14."
        )
    folder = Path(where)
    if folder.is_dir():
        if folder.resolve().is_relative_to(default_weights_dir().resolve()):
            raise ValueError(JUDGE_REFUSED)
        if not (folder / "hubconf.py").is_file():
            raise ValueError(f"train.repa_encoder: {folder} has no hubconf.py; point it at a torch.hub folder.")
        module = torch.hub.load(str(folder), entry, source="local", trust_repo=True)
    else:
        try:
            module = torch.hub.load(where, entry, skip_validation=True, trust_repo=True)
        except (OSError, ValueError, RuntimeError) as error:
            raise FileNotFoundError(
                f"train.repa_encoder: could not load {entry} from {where} without the network ({error}). "
                f"Clone the repository and its weights onto this machine and pass DIR:{entry}."
            ) from None
    if not isinstance(module, nn.Module):
        raise ValueError(f"train.repa_encoder: {spec} did not give a torch module.")
    if any(isinstance(m, AnimalsFeatureNet) for m in module.modules()):
        raise ValueError(JUDGE_REFUSED)
    return FrozenEncoder(module)
