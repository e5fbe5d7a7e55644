"""Checkpoints that are complete or absent: written to a temporary folder, then renamed.

Layout of `<output_dir>/checkpoints/checkpoint-<step>/`:

    model/                 EMA weights, an SDTDiT folder (SDTDiT.from_pretrained)
    training_model.safetensors   the raw (non-EMA) weights being trained
    optimizer.pt           optimizer state (and fp16 grad-scaler state), torch.save of
                           tensors and numbers only, loaded with weights_only=True
    trainer_state.json     step, samples seen, config fingerprint

The step's data and random draws are functions of (seed, step) (training/randomness.py), so
the step alone restores the data position and every random number; nothing training computes
depends on torch's global generators, so no checkpoint holds their states. Checkpoints of
older versions also hold `rng.safetensors` (those states); resuming ignores it.

Crash safety: a save writes `.tmp-checkpoint-<step>/`, trainer_state.json last (so its
presence marks the copy complete), syncs it, and renames it to `checkpoint-<step>`. Re-saving
an existing step moves the old folder aside to `.old-checkpoint-<step>` first, renames the
new one in, then deletes the old, so at every instant one complete copy exists and
`checkpoint-<step>` is either complete or absent. `recover()` (run at the start of every
save and of `resume=latest`) finishes an interrupted swap: a complete copy (temporary or
moved aside) of a step without a complete checkpoint is renamed in, replacing a folder that
an older sdtgen half-deleted in place; superseded and unfinished copies are deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sdtgen.runs import (
    MODEL_DIR,
    TRAINER_STATE_FILE,
    check_finite_weights,
    checkpoint_name,
    is_complete_checkpoint,
    list_checkpoints,
)

logger = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-checkpoint-"  # being written; complete once it holds TRAINER_STATE_FILE
_OLD_PREFIX = ".old-checkpoint-"  # a replaced checkpoint, deleted once its replacement is in
_DOOMED_PREFIX = ".del-checkpoint-"  # pruned by keep_checkpoints, being deleted


def _final_name(folder: Path, prefix: str) -> Path:
    return folder.with_name("checkpoint-" + folder.name[len(prefix) :])


def _prefixed(checkpoint: Path, prefix: str) -> Path:
    """The name of `checkpoint-<step>` moved aside under `prefix` (the inverse of _final_name)."""
    return checkpoint.with_name(prefix + checkpoint.name[len("checkpoint-") :])


def _rename(source: Path, target: Path) -> bool:
    """os.replace, False if another process got there first (every rank may run recover()):
    `source` gone, or `target` filled meanwhile."""
    try:
        os.replace(source, target)
    except OSError:
        return False
    return True


def recover(checkpoints_dir: str | Path) -> list[str]:
    """Finish or undo a save that was interrupted; returns one line per checkpoint it recovered.

    Safe to run from several processes at once and idempotent. It deletes a copy only once
    its step has a complete checkpoint.
    """
    folder = Path(checkpoints_dir)
    if not folder.is_dir():
        return []
    recovered = []
    for prefix, kind in ((_TMP_PREFIX, "complete temporary copy"), (_OLD_PREFIX, "copy moved aside")):
        for copy in sorted(folder.glob(prefix + "*")):
            final = _final_name(copy, prefix)
            if is_complete_checkpoint(copy) and not is_complete_checkpoint(final):
                if final.exists():  # half-deleted in place by an older sdtgen's re-save
                    _delete(final)
                if _rename(copy, final):
                    recovered.append(f"{final.name} recovered from its {kind} {copy.name}")
            if is_complete_checkpoint(final) or not is_complete_checkpoint(copy):
                shutil.rmtree(copy, ignore_errors=True)  # superseded, or a save that never finished
    for doomed in folder.glob(_DOOMED_PREFIX + "*"):
        shutil.rmtree(doomed, ignore_errors=True)
    for line in recovered:
        logger.warning("interrupted checkpoint save: %s", line)
    return recovered


def resolve_resume(resume: str | None, checkpoints_dir: str | Path) -> Path | None:
    """`latest` -> the newest complete checkpoint (None if there is none yet), a path -> itself."""
    if resume in (None, "", False):
        return None
    if resume == "latest":
        recover(checkpoints_dir)
        found = list_checkpoints(checkpoints_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not is_complete_checkpoint(path):
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
    checkpoints_dir: str | Path,
    step: int,
    *,
    ema_model,
    training_model,
    optimizer,
    scaler,
    trainer_state: dict,
    keep: int,
) -> Path:
    """Write checkpoint-<step> atomically (main process only) and keep the newest `keep`."""
    checkpoints_dir = Path(checkpoints_dir)
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    recover(checkpoints_dir)
    final = checkpoints_dir / checkpoint_name(step)
    tmp = checkpoints_dir / f"{_TMP_PREFIX}{step}"
    try:
        tmp.mkdir()
        ema_model.save_pretrained(tmp / MODEL_DIR)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in training_model.state_dict().items()},
            tmp / "training_model.safetensors",
        )
        torch.save(
            {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None},
            tmp / "optimizer.pt",
        )
        _fsync_tree(tmp)
        _write_synced(tmp / TRAINER_STATE_FILE, json.dumps(trainer_state, indent=2))
        _swap_in(tmp, final)
    except OSError as error:  # disk full, quota, I/O: say which save failed and that nothing is lost
        raise OSError(
            error.errno,
            f"Could not save {final} ({error.strerror or error}); the checkpoints before it "
            "are intact: fix the cause and resume with train.resume=latest.",
        ) from error
    for old in list_checkpoints(checkpoints_dir)[:-keep] if keep > 0 else []:
        _delete(old)
    return final


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _swap_in(new: Path, final: Path) -> None:
    """Rename `new` to `final`; an existing `final` is moved aside first and deleted last.

    Deleting it in place would leave, for a moment, a half-deleted `final` that `latest`
    could pick; this way a complete copy sits under a name recover() knows at every instant.
    """
    aside = _prefixed(final, _OLD_PREFIX)
    if final.exists():
        os.replace(final, aside)
    os.replace(new, final)
    shutil.rmtree(aside, ignore_errors=True)


def _delete(checkpoint: Path) -> None:
    """Rename, then delete: a half-deleted folder never keeps a checkpoint's name."""
    doomed = _prefixed(checkpoint, _DOOMED_PREFIX)
    if _rename(checkpoint, doomed):
        shutil.rmtree(doomed, ignore_errors=True)


def load_training_state(checkpoint: Path) -> tuple[dict, dict, dict, dict]:
    """(raw model weights, EMA weights, optimizer + scaler state, trainer_state) of a checkpoint."""
    ema_file = checkpoint / MODEL_DIR / "diffusion_pytorch_model.safetensors"
    with _readable(checkpoint):
        weights = load_file(checkpoint / "training_model.safetensors")
        ema_weights = load_file(ema_file)
        optim = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
        state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text())
    check_finite_weights(weights, checkpoint / "training_model.safetensors")
    check_finite_weights(ema_weights, ema_file)
    return weights, ema_weights, optim, state


@contextlib.contextmanager
def _readable(checkpoint: Path) -> Iterator[None]:
    """Turn a missing, truncated or corrupt file of `checkpoint` into one RuntimeError saying what to do."""
    try:
        yield
    except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, SafetensorError) as error:
        reason = " ".join(str(error).split())[:300]
        raise RuntimeError(
            f"Checkpoint {checkpoint} is unreadable ({reason}). Delete it to resume from the one before."
        ) from error
