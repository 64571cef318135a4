"""The stop marker: how a run that stopped cleanly on a signal tells the batch script so.

Rank 0 writes RUN_DIR/stopped_by_signal once the stop checkpoint is complete (or, for a stop
before the first step, once it is clear that nothing is left to save), as one line:

    SIGUSR1 325 checkpoints/step-00000325      # signal(s) seen, step, checkpoint or "-"

launch/slurm/job.sh removes it before it starts training and reads it afterwards: a marker naming
SIGUSR1 means "requeue me", whatever exit status srun reports for the job step.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from pathlib import Path

from ganpaint.files import write_text_atomically

MARKER_NAME = "stopped_by_signal"


def marker_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / MARKER_NAME


def write_marker(
    run_dir: str | Path, signals_seen: Iterable[int], step: int, checkpoint: Path | None
) -> Path:
    """Write the marker atomically (a reader never sees half a line); returns its path."""
    names = ",".join(signal.Signals(number).name for number in sorted(set(signals_seen)))
    saved = checkpoint.relative_to(run_dir).as_posix() if checkpoint else "-"
    path = marker_path(run_dir)
    write_text_atomically(path, f"{names or 'unknown'} {step} {saved}\n")
    return path
