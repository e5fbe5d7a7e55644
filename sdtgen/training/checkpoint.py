"""Checkpoints that are complete or absent: written to a temporary folder, then renamed.

Layout of `<output_dir>/checkpoints/checkpoint-<step>/`:

    model/                 EMA weights, an SDTDiT folder (SDTDiT.from_pretrained)
    training_model.safetensors   the raw (non-EMA) weights being trained
    optimizer.pt           optimizer state (and fp16 grad-scaler state), torch.save of
                           tensors and numbers only, loaded with weights_only=True
    rng.safetensors        torch's global CPU / CUDA RNG states (training itself draws
                           none from them; kept for code that does)
    trainer_state.json     step, samples seen, config fingerprint

The step's data and random draws are functions of (seed, step) (training/batches.py), so
the step alone restores the data position. A folder appears under its final name only
after everything in it is written and synced, so `latest` never picks a partial save;
a crash leaves a `.tmp-checkpoint-*` folder that the next save removes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

_NAME = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, checkpoints_dir: str | Path) -> Path | None:
    """`latest` -> the newest complete checkpoint (None if there is none yet), a path -> itself."""
    if resume in (None, "", False):
        return None
    if resume == "latest":
        found = list_checkpoints(checkpoints_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(
            f"train.resume={resume!r} is not a checkpoint folder (no trainer_state.json in it). "
            "Use train.resume=latest or a <output_dir>/checkpoints/checkpoint-<step> folder."
        )
    return path


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def save_checkpoint(
    checkpoints_dir: str | Path, step: int, *, ema_model, training_model, optimizer, scaler, trainer_state: dict,
    keep: int,
) -> Path:
    """Write checkpoint-<step> atomically (main process only) and keep the newest `keep`."""
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    for stale in checkpoints_dir.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    final = checkpoints_dir / f"checkpoint-{step}"
    tmp = checkpoints_dir / f"{_TMP_PREFIX}{step}"
    tmp.mkdir()
    ema_model.save_pretrained(tmp / "model")
    save_file({k: v.detach().contiguous().cpu() for k, v in training_model.state_dict().items()}, tmp / "training_model.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None}, tmp / "optimizer.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    save_file(_rng_states(), tmp / "rng.safetensors")
    _fsync_tree(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(checkpoints_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states.update({f"cuda{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    return states


def restore_rng_state(checkpoint: Path) -> None:
    states = load_file(checkpoint / "rng.safetensors")
    torch.set_rng_state(states.pop("cpu"))
    cuda_states = [states[f"cuda{i}"] for i in range(len(states))]
    if torch.cuda.is_available() and cuda_states:
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


def load_training_state(checkpoint: Path) -> tuple[dict, dict, dict]:
    """(raw model weights, optimizer + scaler state, trainer_state) of a checkpoint."""
    try:
        weights = load_file(checkpoint / "training_model.safetensors")
        optim = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, RuntimeError, ValueError) as error:
        raise RuntimeError(f"Checkpoint {checkpoint} is unreadable ({error}). Delete it to resume from the one before.") from error
    return weights, optim, state
