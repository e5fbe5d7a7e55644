"""Errors as one line: what `sdtgen` and `scripts/train_gen.py` print instead of a traceback.

The library raises ValueError (a bad value) or OSError (a missing, unreadable or corrupt
file) with a message that says what to do, and RuntimeError / FloatingPointError when a run
fails on the way. `one_line_errors(prog)` turns them into `prog: error: <message>` on
stderr, printed by the main process only, and exit status 2 (bad input) or 1 (runtime
failure). SDTGEN_DEBUG=1 lets the traceback through instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

CAUGHT = (ValueError, OSError, RuntimeError, ArithmeticError)
# OSErrors of the machine rather than of the input given: the run failed, the input was fine.
_RUNTIME_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM}


def exit_status(error: BaseException) -> int:
    """2 for a bad input (a value, a file), 1 for a failure while running."""
    if isinstance(error, ValueError):
        return 2
    if isinstance(error, OSError):
        return 1 if error.errno in _RUNTIME_ERRNOS else 2
    return 1


def is_main_rank() -> bool:
    """Under `accelerate launch` / torchrun only rank 0 speaks, so N processes print one line."""
    return int(os.environ.get("RANK", "0")) == 0


def debugging() -> bool:
    return os.environ.get("SDTGEN_DEBUG", "") not in ("", "0")


def one_line(prog: str, message: str) -> str:
    """`prog: error: message` on one line; of an error re-raised from a DataLoader worker, whose
    message carries the worker's traceback, only the last line (the error itself)."""
    if "Traceback (most recent call last)" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return f"{prog}: error: {' '.join(message.split())}"


def _close_progress_bars() -> None:
    """Close the bars a failure left open (training, sampling): the error line must not share a bar's line."""
    from tqdm import tqdm

    for bar in list(tqdm._instances):
        bar.close()


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Run the body; turn a CAUGHT error into one stderr line and SystemExit(exit_status)."""
    try:
        yield
    except CAUGHT as error:
        if debugging():
            raise
        if is_main_rank():
            _close_progress_bars()
            print(one_line(prog, str(error) or type(error).__name__), file=sys.stderr)
        raise SystemExit(exit_status(error)) from None
