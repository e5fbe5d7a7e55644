"""Pictures of a run: the sample grid of every class and the loss curve."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from sdtgen.diffusion.sampling import sample_latents, sample_seed


def grid_image(images: torch.Tensor, rows: int, row_labels: list[str] | None = None, pad: int = 2, scale: int = 2) -> Image.Image:
    """(N, C, H, W) images in [-1, 1] as a PIL grid of `rows` rows, with names on the left."""
    images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, _, h, w = images.shape
    cols = -(-n // rows)
    label_width = 8 + 7 * max((len(name) for name in row_labels), default=0) if row_labels else 0
    sheet = Image.new("RGB", (label_width + cols * (w * scale + pad) + pad, rows * (h * scale + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        tile = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(tile, (label_width + pad + c * (w * scale + pad), pad + r * (h * scale + pad)))
    for r, name in enumerate(row_labels or []):
        draw.text((4, pad + r * (h * scale + pad) + h * scale // 2 - 5), name, fill="black")
    return sheet


@torch.no_grad()
def save_sample_grid(model, vae, class_names: list[str], path: Path, *, objective: str, sampler: str | None,
                     steps: int | None, cfg: float, per_class: int, seed: int, classes: list[int] | None = None) -> Path:
    """Sample `per_class` images of each class in `classes` (default all), one row per class.

    Seeds are fixed, so the grids of one run show the same noise and are comparable.
    """
    classes = list(range(len(class_names))) if classes is None else list(classes)
    labels = torch.tensor(classes).repeat_interleave(per_class)
    seeds = [sample_seed(seed, i) for i in range(len(labels))]
    model.eval()
    latents = sample_latents(model, labels, seeds, objective=objective, sampler=sampler, steps=steps, cfg=cfg)
    images = vae.decode(latents)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, rows=len(classes), row_labels=[class_names[c] for c in classes]).save(path)
    return path


def save_loss_plot(log_path: Path, out_path: Path) -> Path | None:
    """Training loss against step from log.jsonl, as a PNG (log-scale y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    if not records:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1.2, label="loss")
    if "mse" in records[0] and "vb" in records[0]:
        ax.plot([r["step"] for r in records], [r["mse"] for r in records], lw=0.8, alpha=0.7, label="mse")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
