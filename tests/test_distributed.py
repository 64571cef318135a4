"""Real 2-process CPU launches (gloo) through `accelerate launch`: ranks stay identical, resume works."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).parent.parent
TINY = ROOT / "tests" / "scripts" / "tiny.yaml"


def launch(script: Path, *args: str, processes: int = 2, timeout: int = 240):
    """`accelerate launch` with the flags that start N synchronised CPU processes (`--cpu` would start one)."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        str(script),
        *args,
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


def digests(run_dir: Path, rank: int) -> list[dict]:
    lines = (run_dir / f"digest-rank{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def two_process_run(synthetic_shards: Path, run_dir: Path, total_steps: int, *overrides: str):
    return launch(
        ROOT / "tests" / "scripts" / "rank_digest.py",
        str(TINY),
        f"data.shards={synthetic_shards}",
        f"run.dir={run_dir}",
        f"schedule.total_steps={total_steps}",
        "checkpoint.every_steps=3",
        *overrides,
    )


def parameters_only(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if "buffers" not in key} for row in rows]


def test_two_processes_train_identically_and_resume(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    first = two_process_run(synthetic_shards, run_dir, total_steps=6)
    assert first.returncode == 0, first.stderr[-3000:]
    rank0, rank1 = digests(run_dir, 0), digests(run_dir, 1)
    assert [row["world"] for row in rank0] == [2] * len(rank0)
    assert [row["step"] for row in rank0] == [2, 3, 4, 6, 6]
    # Per-rank BN: parameters agree exactly; running statistics are each rank's own.
    assert parameters_only(rank0) == parameters_only(rank1)
    assert rank0[-1]["generator_buffers"] != rank1[-1]["generator_buffers"]
    # A 2-process run resumes from the checkpoint a 2-process run made.
    second = two_process_run(synthetic_shards, run_dir, 8)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed {run_dir} at step 6" in second.stdout
    resumed0, resumed1 = digests(run_dir, 0)[len(rank0) :], digests(run_dir, 1)[len(rank0) :]
    assert [row["step"] for row in resumed0] == [8, 8]
    assert parameters_only(resumed0) == parameters_only(resumed1)


@pytest.mark.slow
def test_twenty_consecutive_launches_exit_cleanly(synthetic_shards, tmp_path):
    failures = []
    for attempt in range(20):
        result = launch(
            ROOT / "train.py",
            "--config",
            str(TINY),
            f"data.shards={synthetic_shards}",
            f"run.dir={tmp_path / str(attempt)}",
            "schedule.total_steps=3",
            "schedule.completion_steps=1",
            "schedule.discriminator_steps=1",
        )
        if result.returncode != 0:
            failures.append((attempt, result.returncode, result.stderr[-500:]))
    assert not failures


def test_two_processes_make_the_update_of_one_with_the_whole_batch(tmp_path):
    """2 ranks x B/2 == 1 process x B (as 2 accumulated micro-batches, so BN sees the same
    B/2-image batches), through all three GLCIC phases with Adadelta."""
    script = ROOT / "tests" / "scripts" / "equivalence.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one.safetensors")],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = launch(script, str(tmp_path / "two.safetensors"))
    assert double.returncode == 0, double.stderr[-3000:]
    one = load_file(str(tmp_path / "one.safetensors"))
    two = load_file(str(tmp_path / "two.safetensors"))
    assert one.keys() == two.keys()
    assert all(torch.equal(one[key], two[key]) for key in one if key.startswith("initial."))
    final = [key for key in one if not key.startswith("initial.")]
    worst = max(float((one[key] - two[key]).abs().max()) for key in final)
    # ...and training moved the weights far more than that, so the comparison is not vacuous.
    moved = max(float((two[key] - two[f"initial.{key}"]).abs().max()) for key in final)
    assert worst < 1e-5 and moved > 1000 * worst, (worst, moved)


def test_a_nan_on_one_rank_is_skipped_by_every_rank(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    result = launch(
        ROOT / "tests" / "scripts" / "nan_on_one_rank.py",
        str(TINY),
        f"data.shards={synthetic_shards}",
        f"run.dir={run_dir}",
        "schedule.total_steps=3",
        "schedule.completion_steps=3",
        "schedule.discriminator_steps=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [row["health/skipped_steps"] for row in rows] == [0, 1, 1]  # rank 0's own was finite
    assert parameters_only(digests(run_dir, 0)) == parameters_only(digests(run_dir, 1))
