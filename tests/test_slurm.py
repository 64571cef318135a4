"""Real Slurm jobs (tests/slurm_cluster.py): launch/slurm's batch scripts train on 2 CPU processes,
stop on Slurm's signals, checkpoint, requeue themselves and resume to the same weights.

Marked `slurm`, outside the default run: `make test-slurm` (or `pytest -m slurm -rP`, which also
prints the measured timelines). Jobs are tiny (32 px crops, width-8 nets): 30-60 s each on 2 cores.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from slurm_cluster import SlurmCluster, install
from slurm_jobs import JOB_TIMEOUT_S, TINY_JOB, Job, Timeline, finished, logged_at, step_processes

from ganpaint.training import checkpoint
from ganpaint.training.stop import marker_path

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[1]
TINY = [
    *TINY_JOB,
    "schedule.completion_steps=100",
    "schedule.discriminator_steps=20",
    "checkpoint.every_steps=100",
]
STEPS = 300  # about 40 s of job on 2 cores
SINGLE_NODE = ["--gpus-per-node=0", "--cpus-per-task=2"]
CPU2 = {"ACCELERATE_CONFIG": "launch/cpu2.yaml", "GPUS_PER_NODE": "2"}


@pytest.fixture(scope="session")
def slurm() -> SlurmCluster:
    reason = install()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(nodes=2).start()
    yield cluster
    cluster.stop()


def _submit(
    cluster, run_dir, shards, script="single_node.sbatch", options=(), env=None, steps=STEPS
):
    argv = [
        *options,
        f"--output={run_dir.parent / (run_dir.name + '-%j.out')}",
        f"launch/slurm/{script}",
        "configs/demo.yaml",
        f"run.dir={run_dir}",
        f"data.shards={shards}",
        f"schedule.total_steps={steps}",
        *TINY,
    ]
    job_env = {"PYTHONPATH": str(ROOT), "PYTHON": sys.executable, **(env or CPU2)}
    return Job(cluster, cluster.submit(argv, cwd=ROOT, env=job_env), run_dir)


@pytest.fixture
def submit(slurm, synthetic_shards, tmp_path):
    """submit(name, **options) -> Job; jobs still queued at the end are cancelled."""
    jobs: list[Job] = []

    def start(name: str, **options) -> Job:
        jobs.append(_submit(slurm, tmp_path / name, synthetic_shards, **options))
        return jobs[-1]

    yield start
    for job in jobs:
        slurm.run(["scancel", "--full", "--signal=KILL", job.job_id], check=False)


@pytest.fixture(scope="session")
def reference(slurm, synthetic_shards, tmp_path_factory) -> Job:
    """An uninterrupted job: the weights every stopped-and-requeued job must reach."""
    job = _submit(
        slurm, tmp_path_factory.mktemp("reference") / "run", synthetic_shards, options=SINGLE_NODE
    )
    try:
        job.wait_final()
    finally:
        slurm.run(["scancel", "--full", "--signal=KILL", job.job_id], check=False)
    return job


def _export(run_dir: Path) -> dict[str, torch.Tensor]:
    nets = ("generator", "discriminator")
    return {
        f"{net}.{key}": value
        for net in nets
        for key, value in load_file(str(run_dir / "export" / f"{net}.safetensors")).items()
    }


def assert_same_weights(job: Job, reference: Job) -> None:
    expected, actual = _export(reference.run_dir), _export(job.run_dir)
    assert expected.keys() == actual.keys()
    assert [name for name in expected if not torch.equal(expected[name], actual[name])] == []


def assert_resumed_once(job: Job, steps: int = STEPS) -> int:
    """The job ran twice and logged every step once; returns the step it resumed from."""
    info = job.info()
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0")
    assert job.logged_steps() == list(range(5, steps + 1, 5))
    node_log = job.log("node0")
    stopped_at = int(node_log.split("checkpoint saved at step ")[1].split(";")[0])
    assert f"resumed {job.run_dir} at step {stopped_at} " in node_log
    assert f"checkpoint complete: requeueing job {job.job_id}" in job.log("batch")
    assert "(restart 1)" in job.log("batch")
    return stopped_at


def test_job_trains_to_the_end_and_exports(reference):
    info = reference.info()
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "0", "0:0")
    assert reference.logged_steps() == list(range(5, STEPS + 1, 5))
    assert "srun exited with status 0" in reference.log("batch")
    assert not marker_path(reference.run_dir).exists()
    assert set(_export(reference.run_dir)) and (reference.run_dir / "export/config.yaml").is_file()


def test_usr1_to_the_batch_shell_checkpoints_requeues_and_resumes(submit, reference):
    job = submit("usr1", options=SINGLE_NODE)
    job.wait_training(50)
    signalled = job.signal_batch("USR1")
    timeline = Timeline(job)
    job.watch(finished, JOB_TIMEOUT_S, on_poll=timeline.poll)
    stopped_at = assert_resumed_once(job)
    assert stopped_at >= 50
    assert "launch_plan: passed SIGUSR1 on to training processes" in job.log("node0")
    assert_same_weights(job, reference)
    timeline.show(
        f"USR1 to the batch shell, checkpoint at step {stopped_at}", signalled, stopped_at
    )


def long_steps(reference: Job, training_s: float = 75.0) -> int:
    """Steps for about `training_s` of uninterrupted training at the reference job's pace."""
    return max(STEPS, 5 * math.ceil(training_s / reference.seconds_per_step() / 5))


def test_time_limit_warning_takes_the_same_path(submit, reference):
    # Slurm checks time limits every 30 s: with --time=1 and B:USR1@5 the warning comes 25-55 s
    # after the start, so the run must still be training then, on a fast machine as on a slow
    # one; the kill at the limit comes at least 30 s after the warning. Once requeued, the limit
    # is raised so the resumed run can finish instead of being warned again every minute.
    steps = long_steps(reference)
    options = [*SINGLE_NODE, "--time=1", "--signal=B:USR1@5"]
    job = submit("time-limit", options=options, steps=steps)
    timeline = Timeline(job)
    job.watch(lambda info: int(info["Restarts"]) >= 1, 150, on_poll=timeline.poll)
    job.cluster.run(["scontrol", "update", f"JobId={job.job_id}", "TimeLimit=5"])
    job.watch(finished, JOB_TIMEOUT_S, on_poll=timeline.poll)
    assert "checkpoint saved at step" in job.log("node0"), "warned before training started"
    stopped_at = assert_resumed_once(job, steps)
    assert "SIGTERM" not in job.log("batch")
    batch = job.log("batch")
    warned = logged_at(batch, "SIGUSR1:") - logged_at(batch, "(restart 0)")
    title = f"time-limit warning {warned:.0f} s into the job, checkpoint at step {stopped_at}"
    timeline.show(title, None, stopped_at)


def test_scancel_checkpoints_and_ends_without_requeue(submit, slurm):
    job = submit("scancel", options=SINGLE_NODE)
    job.wait_training(25)
    cancelled = time.time()
    slurm.run(["scancel", job.job_id])
    # More signals while the stop, its checkpoint and the exit are under way: TERM and USR1,
    # every 50 ms, to every process of the job step as Slurm delivers them, until 1 s after the
    # checkpoint is complete.
    sent, marker = 0, marker_path(job.run_dir)
    while time.time() - cancelled < 20 and (
        not marker.exists() or time.time() - marker.stat().st_mtime < 1
    ):
        for pid in step_processes(job.job_id):
            for number in (signal.SIGTERM, signal.SIGUSR1):
                try:
                    os.kill(pid, number)
                    sent += 1
                except ProcessLookupError:
                    pass
        time.sleep(0.05)
    saved_after = marker.stat().st_mtime - cancelled
    info = job.wait_final(60)
    ended_after = time.time() - cancelled

    assert (info["JobState"], info["Restarts"]) == ("CANCELLED", "0")
    names, step, saved = marker_path(job.run_dir).read_text().split()
    assert "SIGTERM" in names.split(",") and saved == f"checkpoints/step-{int(step):08d}"
    assert checkpoint.latest(job.run_dir) == job.run_dir / saved
    assert checkpoint.read_state(job.run_dir / saved)["step"] == int(step) >= 25
    for net in ("generator", "discriminator"):
        assert load_file(str(job.run_dir / saved / f"{net}.safetensors"))
    assert torch.load(job.run_dir / saved / "optimizers.pt", weights_only=True).keys() == {
        "generator",
        "discriminator",
    }
    assert not list((job.run_dir / "checkpoints").glob("*.tmp"))
    assert f"training stopped cleanly on {names} at step {step}" in job.log("batch")
    assert "requeueing" not in job.log("batch")
    assert "srun exited with status 0" in job.log("batch")  # no process died of the signals
    assert ended_after < slurm.kill_wait_s  # every process ended by itself, none was killed
    print(
        f"scancel: checkpoint complete +{saved_after:.1f} s, job over +{ended_after:.1f} s "
        f"(KillWait {slurm.kill_wait_s} s); {sent} further signals sent to the job step"
    )


def test_signal_before_training_requeues_without_a_checkpoint(submit):
    job = submit("early", options=SINGLE_NODE, steps=150)
    # The node supervisor has started; its training processes are still importing torch.
    job.watch(lambda info: finished(info) or "node 0 " in job.log("node0"), 120)
    job.signal_batch("USR1")
    info = job.wait_final()
    assert (info["JobState"], info["Restarts"], info["ExitCode"]) == ("COMPLETED", "1", "0:0")
    node_log = job.log("node0")
    assert "stop signal before step 0: nothing new to save" in node_log
    assert "resumed " not in node_log and "checkpoint saved at step" not in node_log
    assert "stopped cleanly on SIGUSR1 at step 0 (checkpoint: -)" in job.log("batch")
    assert job.logged_steps() == list(range(5, 151, 5))
    assert (job.run_dir / "export" / "generator.safetensors").is_file()


def test_multinode_job_requeues_and_resumes(submit, reference):
    # Two slurmd on this host stand for two nodes: one training process on each.
    options = ["--nodes=2", "--gpus-per-node=0", "--cpus-per-task=1"]
    job = submit(
        "multinode", script="multinode.sbatch", options=options, env={"GPUS_PER_NODE": "1"}
    )
    job.wait_training(50)
    signalled = job.signal_batch("USR1")
    timeline = Timeline(job)
    job.watch(finished, JOB_TIMEOUT_S, on_poll=timeline.poll)
    stopped_at = assert_resumed_once(job)
    assert "--num_machines 2 --num_processes 2 --machine_rank 1" in job.log("node1")
    assert "passed SIGUSR1 on to training processes" in job.log("node1")
    assert_same_weights(job, reference)
    timeline.show(f"multinode, checkpoint at step {stopped_at}", signalled, stopped_at)


PROBE_TASK = r"""#!/bin/bash
# probe LABEL LOG [spawn]: records the stop signals it gets; `spawn` adds two children
label=$1 log=$2
trap 'echo "$label USR1" >> "$log"' USR1
trap 'echo "$label TERM" >> "$log"' TERM
if [ "${3:-}" = spawn ]; then
    bash "$0" "$label/child" "$log" &
    setsid bash "$0" "$label/new-session" "$log" &
fi
echo "$label ready" >> "$log"
for _ in $(seq 1200); do sleep 0.1; done
"""
PROBE_BATCH = r"""#!/bin/bash
# Forward USR1 and TERM to srun the way a batch script might; record srun's exit status.
log=$1 probe=$2
trap 'echo "batch USR1" >> "$log"; kill -USR1 $srun_pid' USR1
trap 'echo "batch TERM" >> "$log"; kill -TERM $srun_pid' TERM
bash "$probe" batch/child "$log" &
srun --ntasks=1 bash "$probe" task "$log" spawn &
srun_pid=$!
while :; do
    wait $srun_pid; status=$?
    kill -0 $srun_pid 2>/dev/null || break
done
echo "srun exited $status" >> "$log"
"""


PROBE_PLAIN = r"""#!/bin/bash
srun --ntasks=1 bash "$2" task "$1" spawn
"""


def _probe(slurm: SlurmCluster, tmp_path: Path, batch_text: str):
    """Submit a probe batch script; returns the job and a reader of the signal log's lines."""
    log, probe, batch = tmp_path / "signals.log", tmp_path / "probe.sh", tmp_path / "batch.sh"
    probe.write_text(PROBE_TASK)
    batch.write_text(batch_text)
    options = ["--cpus-per-task=1", f"--output={tmp_path / 'out'}"]
    job = Job(slurm, slurm.submit([*options, str(batch), str(log), str(probe)]), tmp_path)

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    return job, lines


TREE = ["task", "task/child", "task/new-session"]


def test_what_slurm_signals(slurm, tmp_path):
    """The facts behind launch/slurm/job.sh: `scancel --batch` reaches the batch shell alone,
    srun passes a USR1 on to every process of its step (other sessions included), and srun
    answers a TERM of its own by killing the step at once (SIGKILL, no TERM first)."""
    job, lines = _probe(slurm, tmp_path, PROBE_BATCH)
    job.watch(lambda info: finished(info) or sum("ready" in line for line in lines()) == 4, 60)
    job.signal_batch("USR1")
    job.watch(lambda info: finished(info) or {f"{who} USR1" for who in TREE} <= set(lines()), 30)
    time.sleep(1)
    assert "batch USR1" in lines() and "batch/child USR1" not in lines()
    job.signal_batch("TERM")
    job.wait_final(30)
    assert "srun exited 137" in lines()
    assert not [line for line in lines() if line.startswith("task") and "TERM" in line]


def test_scancel_terms_every_process_and_kills_after_kill_wait(slurm, tmp_path):
    job, lines = _probe(slurm, tmp_path, PROBE_PLAIN)
    job.watch(lambda info: finished(info) or sum("ready" in line for line in lines()) == 3, 60)
    cancelled = time.time()
    slurm.run(["scancel", job.job_id])
    job.wait_final(slurm.kill_wait_s + 30)
    killed_after = time.time() - cancelled
    assert {f"{who} TERM" for who in TREE} <= set(lines())
    assert slurm.kill_wait_s - 1 < killed_after < slurm.kill_wait_s + 15
    print(
        f"scancel: TERM to every process; those that stayed were killed {killed_after:.0f} s later"
    )
