"""The one sampling loop: the images of a request's sample indices, batch by batch.

A request is one label per sample index and a seed. Sample i is drawn from a generator
seeded with `sample_seed(seed, i)` alone (sdtgen/diffusion/sampling.py), so its image is
the same whatever the batch size, whatever other indices share its batch, and however many
processes split the indices. `sdtgen sample`, `sdtgen eval`, `sdtgen inspect` and the
trainer's grids and evaluations all sample through `generate`; one batch is one call of
`SDTPipeline`. `grid_image` lays samples out one row per class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from sdtgen.diffusion.sampling import Guidance, default_guidance, sample_generators
from sdtgen.pipeline import SDTPipeline

OUTPUT_TYPES = ("uint8", "pt", "latent")


def generate(
    pipe: SDTPipeline,
    labels: Sequence[int | str],
    indices: Iterable[int],
    *,
    seed: int,
    batch_size: int,
    steps: int | None = None,
    guidance: Guidance | None = None,
    output_type: str = "uint8",
    progress: str | None = None,
    on_batch: Callable[[list[int], torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """The samples `indices` of a request: sample i has class `labels[i]` and seed `sample_seed(seed, i)`.

    Args:
        pipe: the pipeline; each batch of at most `batch_size` samples is one call of it.
        labels: the class (id or name) of every sample index of the request.
        steps: sampling steps; None = the default of the pipeline's sampler.
        guidance: None = `default_guidance` of the model at full interval and channels.
        output_type: "uint8" (images, the rounding every saved sample uses), "pt" (float
            images in [0, 1]) or "latent" (the scaled latents).
        progress: the description of a progress bar over the samples; None shows none.
        on_batch: called with each batch's indices and outputs as soon as it is done
            (e.g. to save them).

    Returns:
        (len(indices), C, H, W) on the CPU, in the order of `indices`. RuntimeError if a
        sample comes out non-finite.
    """
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}.")
    if batch_size < 1:
        raise ValueError(f"The batch size must be at least 1, got {batch_size}.")
    guidance = guidance or Guidance(default_guidance(pipe.transformer.config))
    indices = list(indices)
    if indices and not 0 <= min(indices) <= max(indices) < len(labels):
        raise ValueError(
            f"Sample indices must be in 0..{len(labels) - 1} (one label per index), got {min(indices)}..{max(indices)}."
        )
    outputs = []
    bar = tqdm(total=len(indices), desc=progress, unit="img", disable=progress is None, dynamic_ncols=True)
    for start in range(0, len(indices), batch_size):
        chunk = indices[start : start + batch_size]
        images = pipe(
            class_labels=[labels[i] for i in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance.scale,
            generator=sample_generators(seed, chunk),
            guidance_channels=guidance.channels,
            guidance_interval=guidance.interval,
            output_type="latent" if output_type == "latent" else "pt",
        ).images
        check_finite(images, f"Samples {chunk[0]}..{chunk[-1]}")
        images = (to_uint8(images) if output_type == "uint8" else images.float()).cpu()
        if on_batch is not None:
            on_batch(chunk, images)
        outputs.append(images)
        bar.update(len(chunk))
    bar.close()
    if not outputs:  # e.g. a process whose share of a request is empty
        return torch.empty(0, dtype=torch.uint8 if output_type == "uint8" else torch.float32)
    return torch.cat(outputs)


def check_finite(images: torch.Tensor, what: str) -> None:
    """Refuse samples with NaN or inf: saved as images they would be black, and look like a result."""
    if not torch.isfinite(images).all():
        raise RuntimeError(
            f"{what} came out non-finite (NaN or inf): the model's weights or the sampler settings are broken "
            "(try float32 weights, a lower guidance scale, or another checkpoint)."
        )


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as uint8 0..255, rounded to the nearest level."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


def grid_image(
    images: torch.Tensor, rows: int, row_labels: list[str] | None = None, pad: int = 2, scale: int = 2
) -> Image.Image:
    """uint8 (N, C, H, W) images as a PIL grid of `rows` rows, with names on the left, each pixel `scale` x `scale`."""
    images = images.cpu()
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
