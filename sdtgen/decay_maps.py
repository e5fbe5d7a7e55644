"""Pictures of what SDT learned: per-head decay around a token, and the gates over the image.

For a latent (usually a generated sample), the model is run once at a chosen timestep
while hooks read each attention's log decay rates lam = |alpha_h| * logsigmoid(gate(x))
(sdtgen/models/attention.py). From them:

- the decay map of head h around token i is exp(M[h, i, :]) = exp(0.5 (lam_i + lam_j) d(i, j)),
  the factor by which attention from i to every other patch is attenuated (1 = none);
- the gate map of head h is exp(lam) per token: 1 means "this token lets attention reach
  far", small means "this token keeps attention local".

A fixed (RMT) decay gives the same diamond for every image; SDT's bends with content.
`draw_decay_maps` samples an image with a pipeline and draws both (`sdtgen inspect`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdtgen.diffusion.sampling import Guidance, default_guidance
from sdtgen.generation import generate
from sdtgen.models.attention import DECAY_VARIANTS
from sdtgen.models.decay import decay_bias
from sdtgen.pipeline import SDTPipeline


@torch.no_grad()
def block_log_decays(model, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Each block's lam, (B, heads, tokens), read by hooks while `model` runs on x (B, C, H, W)
    at the model's `timesteps` (B,) with class `labels` (B,)."""
    if model.config.attention not in DECAY_VARIANTS:
        raise ValueError(f"This model's attention is {model.config.attention!r}: it has no spatial decay to read.")
    captured: list[torch.Tensor] = []

    def hook(module, args):
        captured.append(module.log_decay(args[0]).float().expand(len(x), -1, -1).cpu())

    handles = [block.attn.register_forward_pre_hook(hook) for block in model.blocks]
    try:
        model(x, timesteps, labels)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def collect_log_decay(model, x: torch.Tensor, timestep: float, label: int) -> list[torch.Tensor]:
    """Run `model` on one latent x (1, C, H, W); return each block's lam, (heads, tokens)."""
    lams = block_log_decays(model, x, torch.tensor([timestep], device=x.device), torch.tensor([label], device=x.device))
    return [lam[0] for lam in lams]


def render_decay_maps(
    image: torch.Tensor,
    lam: torch.Tensor,
    grid: tuple[int, int],
    token: tuple[int, int],
    path: str | Path,
    title: str = "",
) -> Path:
    """A PNG: the image with the query token marked, then per head its decay map and gate map.

    `image` is (C, H, W) in [-1, 1]; `lam` (heads, tokens) of one block; `token` (row, col).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = lam.shape[0]
    index = token[0] * grid[1] + token[1]
    decay = decay_bias(lam.unsqueeze(0), grid)[0, :, index].exp().reshape(heads, *grid)
    gates = lam.exp().reshape(heads, *grid)
    picture = ((image.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).squeeze(-1).cpu().numpy()
    scale_y, scale_x = image.shape[1] / grid[0], image.shape[2] / grid[1]
    fig, axes = plt.subplots(2, heads + 1, figsize=(2.0 * (heads + 1), 4.3), dpi=110, squeeze=False)
    for row, (maps, name) in enumerate(((decay, "decay around the token"), (gates, "gate exp(lam) per token"))):
        axes[row, 0].imshow(picture, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].scatter([(token[1] + 0.5) * scale_x - 0.5], [(token[0] + 0.5) * scale_y - 0.5], c="red", s=25)
        axes[row, 0].set_title("sample" if row == 0 else name, fontsize=8)
        for h in range(heads):
            shown = axes[row, h + 1].imshow(maps[h].numpy(), cmap="magma", vmin=0, vmax=1)
            axes[row, h + 1].set_title(f"head {h}" + (f"\n{name}" if h == 0 and row == 0 else ""), fontsize=8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(shown, ax=axes, shrink=0.6, label="attenuation factor (1 = none)")
    if title:
        fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def draw_decay_maps(
    pipe: SDTPipeline,
    class_label: int | str,
    out: str | Path,
    *,
    token: tuple[int, int] | None = None,
    block: int | None = None,
    timestep: float = 100.0,
    seed: int = 0,
    guidance_scale: float | None = None,
) -> Path:
    """Generate one sample of `class_label` (an id or a name) with `pipe` and render its decay maps to `out`.

    The sample is sample 0 of a request with `seed`, drawn with the pipeline's sampler at
    its default steps, guided at every step with `guidance_scale` (None: `default_guidance`).
    `block` defaults to the middle block, `token` (row, col) to the grid's centre; `timestep`
    (0..1000, 0 = clean) is the noise level at which the model reads the generated latent.
    """
    model = pipe.transformer
    label = pipe.get_label_ids([class_label])[0]
    block = len(model.blocks) // 2 if block is None else block
    if not 0 <= block < len(model.blocks):
        raise ValueError(
            f"Block {block} is outside 0..{len(model.blocks) - 1} (this model has {len(model.blocks)} blocks)."
        )
    token = token or (model.grid[0] // 2, model.grid[1] // 2)
    if not (0 <= token[0] < model.grid[0] and 0 <= token[1] < model.grid[1]):
        raise ValueError(f"Token ({token[0]}, {token[1]}) is outside the {model.grid[0]}x{model.grid[1]} token grid.")
    scale = default_guidance(model.config) if guidance_scale is None else guidance_scale
    latent = generate(pipe, [label], [0], seed=seed, batch_size=1, guidance=Guidance(scale), output_type="latent")
    latent = latent.to(model.device)
    image = pipe.latent_vae().decode(latent)[0]
    lam = collect_log_decay(model, latent, timestep, label)[block]
    name = pipe.class_names[label] if pipe.class_names else str(label)
    title = f"{name}: block {block}, token (row {token[0]}, col {token[1]}), timestep {timestep:g}"
    return render_decay_maps(image, lam, model.grid, token, out, title)
