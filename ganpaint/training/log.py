"""What a run shows: TensorBoard scalars and image grids, stats.jsonl, and console progress (rank 0).

Losses are summed on the device between ticks and read back once per `log.every_steps`, so
logging adds no host sync to ordinary steps. The console gets a rich progress bar on a terminal
(the tick's losses printed above it) and plain periodic lines otherwise (SLURM logs); both give
the elapsed time and an ETA. A resumed run rewinds stats.jsonl and TensorBoard to its step, so
the curves hold no duplicate steps (and so does a run rolled back to a checkpoint).

A write that fails for lack of space (stats.jsonl, TensorBoard's event file) ends the run in one
line naming the path and the space left. TensorBoard writes from a thread of its own, which would
print its failure as a traceback and leave the loop to trip over it later without a path: its
thread's exception is kept quiet, the writer is flushed at every tick, and its failure surfaces
there as that one line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ganpaint.config import LogConfig
from ganpaint.files import reporting_full_disk, write_text_atomically


class RunLogger:
    """Rank 0 writes; other ranks keep only the device-side sums (cheap) and write nothing."""

    def __init__(
        self,
        run_dir: Path,
        log: LogConfig,
        is_main: bool,
        total_steps: int,
        start_step: int,
        device: torch.device,
        trackers: Accelerator | None = None,
        config_values: dict | None = None,
    ) -> None:
        """`trackers`: an Accelerator made with accelerate's other trackers (log_with), which
        get every tick's scalars too; `config_values` are recorded with them."""
        self.log, self.is_main, self.device = log, is_main, device
        self.total_steps, self.start_step = total_steps, start_step
        self.run_started = time.perf_counter()
        self.sums: dict[str, torch.Tensor] = {}
        self.ticks = 0
        self.images_seen = 0
        self.tick_started = time.perf_counter()
        self.console = Console(stderr=False)
        self.writer = None
        self.trackers = trackers
        self.progress: Progress | None = None
        if not is_main:
            return
        self.tb_dir, self.stats_path = run_dir / "tb", run_dir / "stats.jsonl"
        if "tensorboard" in log.trackers:
            self.writer = _tensorboard_writer(self.tb_dir, start_step)
        if trackers is not None:
            trackers.init_trackers(run_dir.name, config=_flat(config_values or {}))
        _rewind_stats(self.stats_path, start_step)
        self.stats = self.stats_path.open("a")
        mode = log.progress
        if mode == "auto":
            mode = "rich" if sys.stdout.isatty() else "plain"
        self.mode = mode
        if mode == "rich":
            self.progress = Progress(
                TextColumn("[bold]{task.fields[phase]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                refresh_per_second=4,
            )
            self.task = self.progress.add_task(
                "train", total=total_steps, completed=start_step, phase="", rate=""
            )
            self.progress.start()

    def record(self, losses: dict[str, torch.Tensor], images: int) -> None:
        """Add one step's losses (device tensors) to the running sums."""
        for key, value in losses.items():
            if key in self.sums:
                self.sums[key].add_(value)
            else:
                self.sums[key] = value.detach().clone()
        self.ticks += 1
        self.images_seen += images

    def tick(self, step: int, phase_name: str, extra: dict[str, float] | None = None) -> dict:
        """Read back the means since the last tick and write them everywhere. Returns them."""
        elapsed = time.perf_counter() - self.tick_started
        means = {key: float(value) / max(1, self.ticks) for key, value in self.sums.items()}
        row = {f"{phase_name}/{key}": value for key, value in means.items()}
        row["perf/img_per_s"] = self.images_seen / max(elapsed, 1e-9)
        row["perf/step_ms"] = 1000 * elapsed / max(1, self.ticks)
        if self.device.type == "cuda":
            row["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        row.update(extra or {})
        self.sums, self.ticks, self.images_seen = {}, 0, 0
        self.tick_started = time.perf_counter()
        if self.is_main:
            self._write(step, phase_name, row, means)
        return row

    def _write(self, step: int, phase_name: str, row: dict, means: dict) -> None:
        self.scalars(step, row)
        self.flush()  # a tick is where a failed TensorBoard write surfaces, as one line
        with reporting_full_disk(self.stats_path):
            self.stats.write(
                json.dumps({"step": step, "phase": phase_name, "time": time.time(), **row}) + "\n"
            )
            self.stats.flush()
        losses = " ".join(f"{key} {value:.4g}" for key, value in means.items())
        rate = f"{row['perf/img_per_s']:.1f} img/s"
        if self.progress is not None:
            # The losses go above the bar: in the bar they would be cut at the terminal's width.
            self.progress.console.print(f"step {step} [{phase_name}] {losses}", highlight=False)
            self.progress.update(self.task, completed=step, phase=phase_name, rate=rate)
        elif self.mode == "plain":
            print(
                f"step {step}/{self.total_steps} [{phase_name}] {rate} "
                f"{row['perf/step_ms']:.0f} ms/step {self._timing(step)} {losses}",
                flush=True,
            )

    def _timing(self, step: int) -> str:
        """'elapsed 0:01:05 eta 0:03:10', from this process's mean step time so far."""
        elapsed = time.perf_counter() - self.run_started
        done = max(step - self.start_step, 1)
        remaining = elapsed / done * max(self.total_steps - step, 0)
        return f"elapsed {_clock(elapsed)} eta {_clock(remaining)}"

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.is_main:
            return
        if self.writer is not None:
            with reporting_full_disk(self.tb_dir):
                for key, value in values.items():
                    self.writer.add_scalar(key, value, step)
        if self.trackers is not None:
            self.trackers.log(values, step=step)

    def image_grid(self, step: int, tag: str, grid: torch.Tensor) -> None:
        """grid: [3,H,W] float in [0,1] (TensorBoard; the grids are also in RUN/samples/)."""
        if self.is_main and self.writer is not None:
            with reporting_full_disk(self.tb_dir):
                self.writer.add_image(tag, grid.clamp(0, 1), step)

    def flush(self) -> None:
        """Write what TensorBoard holds (OutOfSpace, one line, if its disk is full)."""
        if self.is_main and self.writer is not None:
            with reporting_full_disk(self.tb_dir):
                self.writer.flush()

    def rewind(self, step: int) -> None:
        """Back to `step` after a rollback: the sums since the last tick are dropped, and so are
        the rows of stats.jsonl and TensorBoard's events past it (they are trained again)."""
        self.sums, self.ticks, self.images_seen = {}, 0, 0
        self.tick_started = time.perf_counter()
        if not self.is_main:
            return
        self.stats.close()
        _rewind_stats(self.stats_path, step)
        self.stats = self.stats_path.open("a")
        if self.writer is not None:
            _close_quietly(self.writer)
            self.writer = _tensorboard_writer(self.tb_dir, step)
        if self.progress is not None:
            self.progress.update(self.task, completed=step)

    def message(self, text: str) -> None:
        if self.is_main:
            self.console.print(text) if self.progress is not None else print(text, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            # Its failures surfaced at the ticks and in `flush`; closing after an error must not
            # replace that error with another.
            _close_quietly(self.writer)
        if self.is_main:
            self.stats.close()
        if self.trackers is not None and self.is_main:
            for tracker in self.trackers.trackers:  # not end_training: the group stays up
                tracker.finish()


def _tensorboard_writer(tb_dir: Path, start_step: int):
    """A SummaryWriter into `tb_dir` whose events past `start_step` are purged (a resume or a
    rollback trains them again), its writer thread's failures kept for the loop to report."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
    from torch.utils.tensorboard import SummaryWriter

    _quiet_threads_of(_AsyncWriterThread)
    with reporting_full_disk(tb_dir):
        return SummaryWriter(str(tb_dir), purge_step=start_step or None)


_QUIET_THREAD_TYPES: set[type] = set()


def _quiet_threads_of(thread_type: type) -> None:
    """Threads of `thread_type` die without printing a traceback: their writer keeps the
    exception and raises it in the loop's thread at the next write or flush."""
    if not _QUIET_THREAD_TYPES:
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if not isinstance(args.thread, tuple(_QUIET_THREAD_TYPES)):
                previous(args)

        threading.excepthook = hook
    _QUIET_THREAD_TYPES.add(thread_type)


def _close_quietly(writer) -> None:
    try:
        writer.close()
    except Exception:  # noqa: BLE001 (a full disk was reported where it was met)
        pass


def _clock(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}"


def _rewind_stats(path: Path, start_step: int) -> None:
    """Drop rows past `start_step` that a run stopped after its last checkpoint had written, so
    a resumed run's stats.jsonl holds every step once."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) <= start_step]
    if len(kept) != len(lines):
        write_text_atomically(path, "".join(kept))


def _row_step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return sys.maxsize  # the torn last line of a killed run: dropped with the rows past it


def _flat(values: dict, prefix: str = "") -> dict[str, object]:
    """A config as flat dotted keys with scalar values, which every tracker accepts."""
    flat: dict[str, object] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = (
                value if isinstance(value, int | float | str | bool) else str(value)
            )
    return flat
