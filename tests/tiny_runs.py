"""Tiny random SDTDiT models saved in sdtgen's run layout, for the sampling and pipeline tests,
and the main job's real run when .ci/run has made one.

Every weight is random (adaLN-Zero and final layers included), so the output depends on
the noise, the timestep and the class: a wrong label or seed changes the images.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sdtgen.config import config_to_dict, load_config, save_config
from sdtgen.data.animals import ANIMAL_CLASSES
from sdtgen.models.dit import SDTDiT

STEP = 2
REPO = Path(__file__).resolve().parents[1]


def main_job_run() -> Path | None:
    """The run the main job leaves in the repository (made by .ci/run), if there is one."""
    run_dir = REPO / "runs" / "animals-sdt"
    if any((run_dir / "checkpoints").glob("checkpoint-*/model")):
        return run_dir
    if os.environ.get("SDTGEN_REQUIRE_MAIN_JOB"):
        pytest.fail("SDTGEN_REQUIRE_MAIN_JOB is set but the main job left no checkpoint in runs/animals-sdt")
    return None


def random_model(
    objective: str = "ddpm",
    *,
    in_channels: int = 4,
    input_size: int = 16,
    num_classes: int = 10,
    attention: str = "sdt",
    class_dropout_prob: float = 0.1,
    seed: int = 0,
) -> SDTDiT:
    """A 1-block SDTDiT with every trainable weight drawn from N(0, 0.1^2), decay rates kept."""
    torch.manual_seed(seed)
    model = SDTDiT(
        input_size=input_size,
        patch_size=4,
        in_channels=in_channels,
        hidden_size=32,
        depth=1,
        num_heads=2,
        num_classes=num_classes,
        learn_sigma=objective == "ddpm",
        attention=attention,
        class_dropout_prob=class_dropout_prob,
    )
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and not name.endswith("alpha"):
                parameter.normal_(0.0, 0.1)
    return model.eval()


def write_run(
    root: Path,
    model: SDTDiT,
    *,
    objective: str = "ddpm",
    vae: str = "builtin",
    class_names=ANIMAL_CLASSES,
    overrides: tuple[str, ...] = (),
) -> Path:
    """`root` laid out like a finished training run whose newest checkpoint holds `model` as its EMA."""
    config = load_config(
        None, [f"output_dir={root}", f"objective={objective}", f"data.vae={vae}", "sample.steps=3", *overrides]
    )
    checkpoint = root / "checkpoints" / f"checkpoint-{STEP}"
    model.save_pretrained(checkpoint / "model")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": STEP, "config": config_to_dict(config)}))
    save_config(config, root / "config.yaml")
    (root / "class_names.json").write_text(json.dumps(list(class_names)))
    return root
