"""The model card (README.md with Hugging Face metadata) that `sdtgen export` writes beside a pipeline.

The front matter says what loads it (`library_name: diffusers`), tags, the license; the
body lists the classes, a summary of the training config (when the model comes from a
run) and the figures of a metrics.json from `sdtgen eval`, and shows both ways to load it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sdtgen.config import current_names
from sdtgen.runs import Source

METRICS = (("fid", "FID"), ("is", "IS"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"))
LISTED_CLASSES = 100  # more are named in model_index.json's id2label only


def read_metrics(path: Path) -> dict[str, Any]:
    """A metrics.json of `sdtgen eval`; ValueError if it is not one."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a readable metrics.json ({error}).") from None
    if not isinstance(metrics, dict) or not any(key in metrics for key, _ in METRICS):
        raise ValueError(f"{path} holds no metrics (fid, is, kid, ...); pass a metrics.json of `sdtgen eval`.")
    return metrics


def model_card(source: Source, objective: str, folder: str, *, license_id: str, metrics: dict[str, Any] | None) -> str:
    """README.md text for the pipeline exported from `source` to `folder`."""
    model = source.model_config
    front = {
        "library_name": "diffusers",
        "license": license_id,
        "tags": ["sdtgen", "class-conditional", "image-generation", "diffusion-transformer", model["attention"]],
    }
    lines = [
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---",
        "",
        f"# SDTDiT ({model['attention']} attention, {objective})",
        "",
        f"A class-conditional diffusion transformer trained with sdtgen ({objective} objective): "
        f"{model['depth']} blocks of width {model['hidden_size']}, {model['num_heads']} heads, patch {model['patch_size']}, "
        f"on {model['in_channels']}x{model['input_size']}x{model['input_size']} latents.",
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
        "# sdtgen must be installed (pip install sdtgen): the pipeline's code is its SDTPipeline",
        f"pipe = DiffusionPipeline.from_pretrained({folder!r}, trust_remote_code=True)",
        f"images = pipe(class_labels=[{_example_label(source)}], generator=torch.manual_seed(0)).images",
        "```",
        "",
        f"`from sdtgen import SDTPipeline; SDTPipeline.from_pretrained({folder!r})` loads it too, without "
        "`trust_remote_code`.",
        "",
        *_classes(source),
        *_training(source.run_config),
        *_metrics(metrics),
    ]
    return "\n".join(lines).rstrip() + "\n"


def _example_label(source: Source) -> str:
    return repr(source.class_names[0]) if source.class_names else "0"


def _classes(source: Source) -> list[str]:
    names = source.class_names or [str(i) for i in range(source.num_classes)]
    listed = ", ".join(f"{i} {name}" for i, name in enumerate(names[:LISTED_CLASSES]))
    more = (
        f", ... ({source.num_classes} in all; model_index.json's id2label names each)"
        if len(names) > LISTED_CLASSES
        else ""
    )
    return ["## Classes", "", f"{source.num_classes} classes: {listed}{more}.", ""]


def _training(run_config: dict[str, Any] | None) -> list[str]:
    """The training config summary; nothing for a model without a run around it."""
    if not run_config:
        return []
    model, data, train = run_config["model"], run_config["data"], run_config["train"]
    rows = [
        ("objective", run_config["objective"]),
        ("model", f"{model['preset']}, attention {model['attention']}"),
        ("data", f"{data['dataset']} at {data['image_size']}px, VAE {data['vae']}"),
        ("steps", f"{train['max_steps']} of {train['global_batch_size']} images"),
        ("optimizer", f"AdamW, lr {train['lr']} ({train['lr_schedule']}), EMA {train['ema_decay']}"),
        ("precision", train["mixed_precision"]),
        ("seed", run_config["seed"]),
    ]
    return ["## Training", "", "| setting | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]


def _metrics(metrics: dict[str, Any] | None) -> list[str]:
    """The figures of a metrics.json and how they were made; nothing without one."""
    if not metrics:
        return []
    shown = [(name, metrics[key]) for key, name in METRICS if metrics.get(key) is not None]
    if metrics.get("class_accuracy") is not None:
        shown.append(("class accuracy", f"{metrics['class_accuracy']:.1%}"))
    made = current_names(metrics.get("provenance", {}))  # a metrics.json of before the rename says cfg
    how = ", ".join(
        f"{key} {made[key]}"
        for key in ("num_samples", "sampler", "steps", "guidance_scale", "reference_spec")
        if key in made
    )
    return [
        "## Evaluation",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(
            f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |"
            for name, value in shown
        ),
        "",
        f"From `sdtgen eval` ({how})." if how else "From `sdtgen eval`.",
        "",
    ]
