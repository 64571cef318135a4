"""One trainer per run directory: the lock RUN/.lock, held for the life of the run.

Two trainers writing one run directory would interleave checkpoints, rewind each other's
stats.jsonl and race on the export, so the main process takes an exclusive `fcntl.flock` on
RUN/.lock before anything writes into the run directory, and keeps it until the run returns. The
file holds the holder as JSON ({"host", "pid", "since"}); a second trainer refuses at once, in one
line naming it. Under DDP or DeepSpeed only rank 0 takes the lock; the other ranks learn the outcome
through a collective, so all of them refuse together.

The kernel releases a flock when its process dies, however it dies (kill -9, OOM killer, node
reboot), so a lock is never stale: a trainer that finds the file but no lock on it takes it over and
says whose it was. That is also what a requeued SLURM job does on another node, provided the run
directory's file system honours flock across machines: local disks and Lustre/GPFS do, NFS does
with lock support (NFSv4, or NFSv3 with lockd; not a `nolock` mount, where each node would see only
its own locks). A file system that refuses locks altogether is named in one line.

The file is never deleted: deleting it could let a second trainer lock the deleted file while a
third locks a new one. A run that ends empties it instead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from accelerate import Accelerator

from ganpaint.errors import UserError
from ganpaint.files import reporting_full_disk
from ganpaint.training.distributed import main_process_value

LOCK_NAME = ".lock"


class RunDirectoryBusy(UserError):
    """Another trainer holds the run directory's lock."""


class RunLock:
    """The held lock of one run directory (rank 0), released by `release` or by process exit."""

    def __init__(self, path: Path, handle: IO[str] | None) -> None:
        self.path, self.handle = path, handle
        if handle is not None:
            _HELD.append(self)

    def release(self) -> None:
        """Empty the file (a clean end leaves no holder to report) and drop the lock."""
        if self in _HELD:
            _HELD.remove(self)
        if self.handle is None:
            return
        try:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.flush()
        except OSError:
            pass  # a full or vanished disk: the lock goes with the descriptor all the same
        finally:
            self.handle.close()  # closing the descriptor releases the flock
            self.handle = None


# The locks this process holds. A forked child (a DataLoader worker) inherits their descriptors,
# and a flock lasts while any descriptor of it is open: an orphaned worker that outlives a killed
# trainer by a few seconds would hold the run directory against its own restart. So a child
# closes its copies at once (closing a copy releases nothing in the parent).
_HELD: list[RunLock] = []


def _forget_locks_in_child() -> None:
    for run_lock in _HELD:
        if run_lock.handle is not None:
            run_lock.handle.close()
            run_lock.handle = None
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_locks_in_child)


def lock_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LOCK_NAME


def describe_holder(text: str) -> str:
    """'pid 1234 on host gpu07 since 2026-12-07 07:16:02 UTC' from the lock file's JSON."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on host {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process (its record is unreadable)"


def acquire(run_dir: str | Path) -> tuple[RunLock, str | None]:
    """Take RUN/.lock (creating the run directory); returns the lock and a note when it was taken
    over from a process that died holding it. RunDirectoryBusy (one line) if another holds it."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (held open for the life of the run)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.seek(0)
        text = handle.read()
        handle.close()
        if error.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
            raise RunDirectoryBusy(
                f"{Path(run_dir)} is being trained by {describe_holder(text)} ({path}): wait for "
                "that run to end or stop it, or use another run.dir"
            ) from None
        raise UserError(
            f"{path}: cannot lock the run directory ({os.strerror(error.errno)}): its file system "
            "must support flock (NFS: mount with lock support, not `nolock`)"
        ) from None
    handle.seek(0)
    previous = handle.read().strip()
    record = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    try:
        with reporting_full_disk(path):
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(record) + "\n")
            handle.flush()
    except BaseException:
        handle.close()
        raise
    note = None
    if previous:
        note = f"took over {path} from {describe_holder(previous)}, which no longer holds it"
    return RunLock(path, handle), note


def acquire_on_rank_zero(
    accelerator: Accelerator, run_dir: str | Path
) -> tuple[RunLock, str | None]:
    """`acquire` on rank 0; every rank raises if it failed there (collective)."""
    run_lock, note, refusal = RunLock(lock_path(run_dir), None), None, None
    if accelerator.is_main_process:
        try:
            run_lock, note = acquire(run_dir)
        except UserError as error:
            refusal = error
    if main_process_value(accelerator, int(refusal is not None)):
        if refusal is not None:
            raise refusal
        raise RunDirectoryBusy(
            f"{run_dir}: rank 0 could not take {lock_path(run_dir)} (it says why): this run stops"
        )
    return run_lock, note
