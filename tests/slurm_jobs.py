"""Following a Slurm job of tests/test_slurm.py: its state, logs, steps, processes and timeline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from slurm_cluster import SlurmCluster

from ganpaint.training.stop import marker_path

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
JOB_TIMEOUT_S = 240
# A 32 px GLCIC at width 8 that logs every 5 steps: the jobs of the Slurm and requeue tests.
TINY_JOB = [
    "data.image_px=32",
    "data.resize_min_px=32",
    "data.resize_max_px=32",
    "masks.hole_min_px=8",
    "masks.hole_max_px=12",
    "masks.local_px=16",
    "model.width=8",
    "model.disc_width=8",
    "model.fc_features=16",
    "data.batch_size=4",
    "data.workers=1",
    "data.val_images=2",
    "log.every_steps=5",
    "log.image_every_steps=100000",
    "log.progress=plain",
]


def finished(info: dict[str, str]) -> bool:
    return info["JobState"] in FINAL_STATES


@dataclass
class Job:
    """One submitted job and its run directory; every wait has a deadline."""

    cluster: SlurmCluster
    job_id: str
    run_dir: Path

    def info(self) -> dict[str, str]:
        return self.cluster.job(self.job_id)

    def log(self, name: str) -> str:
        path = self.run_dir / "logs" / f"slurm-{self.job_id}-{name}.out"
        return path.read_text() if path.exists() else ""

    def logged_steps(self) -> list[int]:
        stats = self.run_dir / "stats.jsonl"
        lines = stats.read_text().splitlines() if stats.exists() else []
        return [int(line.split('"step": ')[1].split(",")[0]) for line in lines]

    def seconds_per_step(self) -> float:
        """Average training time per step, from the times in stats.jsonl (start-up excluded)."""
        lines = (self.run_dir / "stats.jsonl").read_text().splitlines()
        first, last = (json.loads(line) for line in (lines[0], lines[-1]))
        return (last["time"] - first["time"]) / (last["step"] - first["step"])

    def watch(
        self, until: Callable[[dict], bool], timeout_s: float, on_poll: Callable[[], None] = None
    ) -> None:
        """Poll `scontrol show job` (and call `on_poll`) every 0.25 s until `until(info)`."""
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info()
            if on_poll is not None:
                on_poll()
            if until(info):
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"job {self.job_id} still {info['JobState']} after {timeout_s} s:\n"
                    f"{self.log('batch')}\n{self.log('node0')[-3000:]}"
                )
            time.sleep(0.25)

    def wait_final(self, timeout_s: float = JOB_TIMEOUT_S) -> dict[str, str]:
        self.watch(finished, timeout_s)
        return self.info()

    def wait_training(self, steps: int) -> None:
        """Until the run has logged `steps` steps (it must still be running then)."""
        self.watch(lambda info: finished(info) or self.step() >= steps, 120)
        assert not finished(self.info()), self.log("batch")

    def step(self) -> int:
        return max(self.logged_steps(), default=0)

    def signal_batch(self, name: str = "USR1") -> float:
        sent = time.time()
        self.cluster.run(["scancel", f"--signal={name}", "--batch", self.job_id])
        return sent


def logged_at(log: str, needle: str) -> float | None:
    """The time of the batch log's first `=== YYYY-MM-DD HH:MM:SS.mmm ...` line holding `needle`."""
    for line in log.splitlines():
        if line.startswith("=== ") and needle in line:
            stamp, fraction = line[4:23], line[24:27]
            return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(fraction) / 1000
    return None


class Timeline:
    """When each stage of one stop-and-requeue happened, from the job's own records.

    Pass `poll` to Job.watch: it catches the marker's time before the restart removes it.
    """

    def __init__(self, job: Job) -> None:
        self.job, self.saved = job, None

    def poll(self) -> None:
        path = marker_path(self.job.run_dir)
        if self.saved is None and path.exists():
            self.saved = path.stat().st_mtime

    def stages(self, signalled: float | None, stopped_at: int) -> dict[str, float]:
        batch = self.job.log("batch")
        rows = (self.job.run_dir / "stats.jsonl").read_text().splitlines()
        after = [json.loads(row)["time"] for row in rows if json.loads(row)["step"] > stopped_at]
        moments = {
            "signal": signalled or logged_at(batch, "SIGUSR1:"),
            "checkpoint saved": self.saved,
            "requeued": logged_at(batch, "requeueing job"),
            "running again": logged_at(batch, "(restart 1)"),
            "first step after the resume logged": after[0],
            "finished": (self.job.run_dir / "export" / "generator.safetensors").stat().st_mtime,
        }
        return {name: moment - moments["signal"] for name, moment in moments.items()}

    def show(self, title: str, signalled: float | None, stopped_at: int) -> None:
        """Print the stages in seconds after the signal (`pytest -rP` shows them)."""
        stages = self.stages(signalled, stopped_at).items()
        print(f"{title}: " + ", ".join(f"{name} +{seconds:.1f} s" for name, seconds in stages))


def step_processes(job_id: str) -> list[int]:
    """Every process of the job's step 0 (srun's task and all it started), found through /proc."""
    wanted = {f"SLURM_JOB_ID={job_id}".encode(), b"SLURM_STEP_ID=0"}
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted <= set(
                (entry / "environ").read_bytes().split(b"\0")
            ):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found
