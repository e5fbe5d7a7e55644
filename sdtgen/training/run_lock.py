"""One training process per run folder: `<output_dir>/.lock`, held while a run trains into it.

The lock is an OS file lock (`fcntl.flock`) on that file. The kernel releases it when its
process ends, however it ends, so a lock file whose lock is free was left by a process
that is gone: the next run takes it over and says so. The file records the holder (pid,
host, start) for the message a second run prints. Only the launch's main process takes
the lock (all ranks of one launch are one run); the other ranks learn the outcome by
broadcast, so a refused launch stops on every rank. The file sits beside `checkpoints/`,
never inside it, so `train.resume=latest` cannot mistake it for a checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from sdtgen.distributed import process_state
from sdtgen.runs import LOCK_FILE

logger = logging.getLogger(__name__)


class RunFolderInUse(RuntimeError):
    """Another process holds the run folder's lock (a failure to start, not a bad input: exit status 1)."""


class RunLock:
    """The held lock of one run folder; `release()` frees it and removes the file."""

    def __init__(self, fd: int, path: Path, created_folder: bool) -> None:
        self.fd: int | None = fd
        self.path = path
        self.created_folder = created_folder

    @classmethod
    def acquire(cls, output_dir: str | Path) -> RunLock:
        """Take the lock of `output_dir` (created if missing); RunFolderInUse naming the holder if taken."""
        folder = Path(output_dir)
        created = _make_folder(folder)
        path = folder / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe(_read_record(fd))
                os.close(fd)
                raise RunFolderInUse(
                    f"{folder} is being trained into by {holder}; wait for that run to end (or stop it), "
                    "or pass another output_dir."
                ) from None
            if _is_current(fd, path):
                break
            os.close(fd)  # its holder removed the file as we opened it: lock the file there now
        previous = _read_record(fd)
        if previous:
            logger.warning(
                "took over the lock of %s, which ended without releasing it (an interrupted run; "
                "train.resume=latest continues it)",
                _describe(previous),
            )
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        return cls(fd, path, created)

    def release(self) -> None:
        """Remove the file, then free the lock (in that order, so no waiter locks a removed file)."""
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = None
        if self.created_folder:
            with contextlib.suppress(OSError):  # a run that stopped before writing anything leaves no folder
                self.path.parent.rmdir()


@contextlib.contextmanager
def hold_run_folder(output_dir: str | Path) -> Iterator[None]:
    """Hold `output_dir`'s lock for the body: taken by the main process, its outcome shared with every rank."""
    from accelerate.utils import broadcast_object_list

    state = process_state()
    lock, refusal = None, None
    if state.is_main_process:
        try:
            lock = RunLock.acquire(output_dir)
        except (OSError, RuntimeError) as error:
            refusal = error
    outcome = [refusal]
    broadcast_object_list(outcome)
    if outcome[0] is not None:
        raise outcome[0]
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def _make_folder(folder: Path) -> bool:
    """Create `folder` if needed; True if it was created. OSError saying what to do if it cannot be."""
    if folder.is_dir():
        return False
    if folder.exists():
        raise NotADirectoryError(f"output_dir={folder} is a file, not a folder; pass a folder for the run.")
    try:
        folder.mkdir(parents=True)
    except OSError as error:
        raise OSError(
            f"Cannot create output_dir={folder} ({error.strerror or error}); pass a folder you can write to."
        ) from error
    return True


def _is_current(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path`."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _read_record(fd: int) -> dict:
    """The holder record in the lock file; {} when it is empty or unreadable."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _describe(record: dict) -> str:
    """`process 1234 on host h (started ...)`, as far as the record says."""
    where = "" if record.get("host") in (None, socket.gethostname()) else f" on host {record['host']}"
    since = f" (started {record['started']})" if record.get("started") else ""
    return f"process {record.get('pid', '(unknown pid)')}{where}{since}"
