"""This process's place in a launch: one process, or one of several under `accelerate launch`."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import PartialState


def process_state() -> PartialState:
    """This process's place under `accelerate launch` (one process otherwise).

    accelerate's PartialState ignores ACCELERATE_USE_CPU (its Accelerator honours it), so a
    CPU launch of several processes would run as that many independent single processes,
    each doing all the work; pass it through.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    check_launch(state.num_processes)
    return state


def check_launch(num_processes: int) -> None:
    """Stop a launch whose processes did not join into one job; ValueError saying how to launch.

    Without a GPU, `accelerate launch --multi_gpu --num_processes N` lacking ACCELERATE_USE_CPU=1
    starts N processes that each see a world of one: N independent jobs writing the same
    files. The launcher's WORLD_SIZE still says N.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and num_processes == 1:
        raise ValueError(
            f"Launched as {launched} processes, but they did not join into one job (no GPU here, and accelerate was "
            "not told to use the CPU). On a CPU-only machine launch with "
            f"`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {launched} ...`."
        )


def leave_process_group() -> None:
    """Leave the launch's process group, if this process joined one (a no-op otherwise).

    A process that exits still in a gloo group can abort while the group's threads shut down
    ("terminate called without an active exception"), failing a launch whose work was done.
    """
    distributed = sys.modules.get("torch.distributed")  # never import torch just to find out
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()
