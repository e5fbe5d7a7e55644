"""Pictures of a run: the sample grid of every class and the loss curve."""

from __future__ import annotations

from pathlib import Path

import torch

from sdtgen.diffusion.sampling import Guidance
from sdtgen.generation import generate, grid_image
from sdtgen.pipeline import SDTPipeline
from sdtgen.runs import read_log
from sdtgen.vae import LatentVAE


@torch.no_grad()
def save_sample_grid(
    model,
    vae: LatentVAE,
    class_names: list[str],
    path: Path,
    *,
    objective: str,
    sampler: str | None,
    steps: int | None,
    guidance: Guidance,
    per_class: int,
    seed: int,
    classes: list[int] | None = None,
) -> Path:
    """Sample `per_class` images of each class in `classes` (default all), one row per class.

    Sample i of the grid has seed sample_seed(seed, i), so the grids of one run show the
    same noise and are comparable, and `sdtgen sample` redraws them.
    """
    classes = list(range(len(class_names))) if classes is None else list(classes)
    labels = [c for c in classes for _ in range(per_class)]
    model.eval()
    pipe = SDTPipeline.from_model(model, vae, objective=objective, sampler=sampler)
    images = generate(
        pipe, labels, range(len(labels)), seed=seed, batch_size=len(labels), steps=steps, guidance=guidance
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(images, rows=len(classes), row_labels=[class_names[c] for c in classes]).save(path)
    return path


def save_loss_plot(log_path: Path, out_path: Path) -> Path | None:
    """Training loss against step from log.jsonl, as a PNG (log-scale y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(log_path)
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
