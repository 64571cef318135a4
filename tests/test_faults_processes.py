"""Fault injection with whole processes (slow): every error case through the command line under a
timeout, Ctrl-C alone and under `accelerate launch`, an error on one of two ranks, and a kill -9
sweep that must end bit-equal to an uninterrupted run. A process that does not exit in time is a
hang and fails its test.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_faults import (
    ROOT,
    SHORT_RUN,
    TINY,
    assert_one_line_error,
    copy_run,
    copy_shards,
    ganpaint,
    garbage_shards,
    interrupt_while_the_loader_starts,
    run_command,
    set_shard_name,
    stats,
    train_short_run,
)

from ganpaint.config import load as load_config
from ganpaint.training import checkpoint, integrity
from ganpaint.training.loop import StopSignals

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_shards) -> tuple[Path, dict]:
    return train_short_run(tmp_path_factory.mktemp("finished") / "run", synthetic_shards)


# --- every error case above, through the command line, under a timeout ---------------------------


def error_case(name: str, shards: Path, tmp_path: Path, finished_run) -> tuple[list[str], str]:
    """(ganpaint arguments, expected text of its one error line) for case `name`."""
    train_args = ["train", "--config", str(TINY), f"data.shards={shards}"]
    run = f"run.dir={tmp_path / 'run'}"
    if name == "pipe manifest (train)":
        hostile = copy_shards(shards, tmp_path / "hostile")
        set_shard_name(hostile, "train", f"pipe:touch {tmp_path / 'MARKER'}")
        return ["train", "--config", str(TINY), f"data.shards={hostile}", run], "refused shard"
    if name == "pipe manifest (eval)":
        from test_eval import make_run

        hostile = copy_shards(shards, tmp_path / "hostile")
        set_shard_name(hostile, "val", f"pipe:touch {tmp_path / 'MARKER'}")
        config = load_config(TINY, [f"data.shards={shards}", run])
        return ["eval", "--run", str(make_run(config)), "--shards", str(hostile)], "refused shard"
    if name == "YAML list":
        listed = tmp_path / "list.yaml"
        listed.write_text("- a\n- b\n")
        return ["train", "--config", str(listed)], "top level must be a mapping"
    if name == "run.dir is a file":
        (tmp_path / "a_file").write_text("")
        return [*train_args, f"run.dir={tmp_path / 'a_file'}"], "not a directory"
    if name == "run.seed=-1":
        return [*train_args, run, "run.seed=-1"], "run.seed"
    if name == "missing val split":
        return [*train_args, run, "data.val_split=nope"], "no split 'nope'"
    if name == "garbage val split":
        garbage = garbage_shards(shards, tmp_path / "garbage", ("val",))
        return ["train", "--config", str(TINY), f"data.shards={garbage}", run], "no image of split"
    if name == "garbage train shards, 2 workers":
        garbage = garbage_shards(shards, tmp_path / "garbage", ("train",))
        args = ["train", "--config", str(TINY), f"data.shards={garbage}", run, "data.workers=2"]
        return args, "corrupt samples or shards in a row"
    if name == "manifest not JSON":
        broken = copy_shards(shards, tmp_path / "broken")
        (broken / "manifest.json").write_text("{")
        return ["train", "--config", str(TINY), f"data.shards={broken}", run], "not a ganpaint"
    if name == "every checkpoint damaged":
        run_dir, _ = copy_run(finished_run, tmp_path / "damaged")
        for state_file in (run_dir / "checkpoints").glob("step-*/state.json"):
            state_file.unlink()
        return [*train_args, f"run.dir={run_dir}", *checkpoint_overrides()], "no usable checkpoint"
    if name == "export dir is a file":
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "export").write_text("")
        return [*train_args, run, "schedule.total_steps=4"], "export"
    raise AssertionError(name)


def checkpoint_overrides() -> list[str]:
    return [f"{key}={value}" for key, value in SHORT_RUN.items()]


ERROR_CASES = [
    "pipe manifest (train)",
    "pipe manifest (eval)",
    "YAML list",
    "run.dir is a file",
    "run.seed=-1",
    "missing val split",
    "garbage val split",
    "garbage train shards, 2 workers",
    "manifest not JSON",
    "every checkpoint damaged",
    "export dir is a file",
]


@pytest.mark.parametrize("name", ERROR_CASES)
def test_every_error_case_ends_in_one_line_through_the_command_line(
    name, synthetic_shards, tmp_path, finished_run
):
    arguments, expected = error_case(name, synthetic_shards, tmp_path, finished_run)
    status, _, err = ganpaint(*arguments, timeout=180)
    assert status == 2, err[-3000:]
    assert_one_line_error(err, expected)
    assert not (tmp_path / "MARKER").exists()


# --- slow: signals, other ranks, kill -9 ---------------------------------------------------------


def tiny_train_command(shards: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ganpaint.cli",
        "train",
        "--config",
        str(TINY),
        f"data.shards={shards}",
        f"run.dir={run_dir}",
        "data.workers=1",
        *overrides,
    ]


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the signal goes to the group, as a terminal's Ctrl-C does
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
    )


def wait_for_training(process: subprocess.Popen, run_dir: Path, deadline_s: float = 120) -> None:
    deadline = time.time() + deadline_s
    while not ((run_dir / "stats.jsonl").exists() and (run_dir / "stats.jsonl").read_text()):
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.1)


def finish(process: subprocess.Popen, timeout: float = 120) -> tuple[str, str]:
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, err = process.communicate()
        pytest.fail(f"hang: still running {timeout} s after the signal\n{err[-2000:]}")


def test_ctrl_c_checkpoints_at_the_next_tick_and_a_second_press_stops_at_once(
    synthetic_shards, tmp_path
):
    run_dir = tmp_path / "run"
    process = start(tiny_train_command(synthetic_shards, run_dir, "schedule.total_steps=400"))
    wait_for_training(process, run_dir)
    os.killpg(process.pid, signal.SIGINT)
    out, err = finish(process)
    assert process.returncode == 0 and "Traceback" not in err, err[-3000:]
    stopped_at = checkpoint.saved_steps(run_dir)[-1][0]
    assert f"checkpoint saved at step {stopped_at}; run the same command again" in out
    # Ticks far apart: the first press waits for one, the second (later) press stops at once.
    slow_ticks = ("schedule.total_steps=400", "log.every_steps=1000", "checkpoint.every_steps=2")
    process = start(tiny_train_command(synthetic_shards, run_dir, *slow_ticks))
    deadline = time.time() + 120
    while checkpoint.saved_steps(run_dir)[-1][0] < stopped_at + 4:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(StopSignals.SECOND_PRESS_S + 0.5)
    os.killpg(process.pid, signal.SIGINT)
    out, err = finish(process, timeout=30)
    assert process.returncode == 130, err[-3000:]
    assert_one_line_error(err.replace("interrupted", "error: interrupted"), "interrupted")
    for _, path in checkpoint.saved_steps(run_dir):
        integrity.verify(path)  # atomic saves: whatever was interrupted left no half checkpoint
    status, out, err = ganpaint(*tiny_train_command(synthetic_shards, run_dir)[3:])
    assert status == 0 and "resumed" in out, err[-3000:]


def test_ctrl_c_at_any_moment_of_the_loader_start_does_not_hang(synthetic_shards):
    for delay_s in random.Random(5).sample([step / 1000 for step in range(40)], 10):
        interrupt_while_the_loader_starts(synthetic_shards, delay_s)


def accelerate_launch(script: Path, *arguments: str, **env: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        str(script),
        *arguments,
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=ROOT,
        env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", **env},
    )


def test_ctrl_c_under_accelerate_launch_checkpoints_without_a_traceback_from_ganpaint(
    synthetic_shards, tmp_path
):
    run_dir = tmp_path / "run"
    arguments = tiny_train_command(synthetic_shards, run_dir, "schedule.total_steps=400")[5:]
    process = accelerate_launch(ROOT / "train.py", "--config", *arguments)
    wait_for_training(process, run_dir)
    os.killpg(process.pid, signal.SIGINT)  # the launcher and both ranks, as a terminal does
    out, err = finish(process)
    stopped_at = checkpoint.saved_steps(run_dir)[-1][0]
    assert f"checkpoint saved at step {stopped_at}" in out, err[-3000:]
    integrity.verify(checkpoint.latest(run_dir))
    # The launcher reports its own signal; nothing of ganpaint's appears in a traceback.
    assert "ganpaint/" not in err and 'train.py", line' not in err, err[-3000:]


@pytest.mark.parametrize("kind", ["user", "bug"])
def test_an_error_on_one_rank_ends_every_process(synthetic_shards, tmp_path, kind):
    run_dir = tmp_path / "run"
    arguments = tiny_train_command(synthetic_shards, run_dir, "schedule.total_steps=400")[5:]
    started = time.time()
    process = accelerate_launch(
        ROOT / "tests" / "scripts" / "failing_rank.py",
        "--config",
        *arguments,
        FAIL_RANK="1",
        FAIL_STEP="3",
        FAIL_KIND=kind,
    )
    out, err = finish(process, timeout=180)
    assert process.returncode != 0
    assert f"train.py (rank 1): error: {'' if kind == 'user' else 'RuntimeError: '}injected" in err
    # Rank 0 sees its collective fail and says so, unless the launcher's SIGTERM ends it first.
    said = "train.py (rank 0): error: another process ended" in err
    assert said or "Signal 15 (SIGTERM) received" in err, err[-3000:]
    assert time.time() - started < 120


def saves_in_progress(run_dir: Path) -> set[tuple[str, int]]:
    """(name, inode) of each step-N.tmp directory: a checkpoint being written (or a leftover)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return set()
    return {
        (entry.name, entry.inode()) for entry in os.scandir(root) if entry.name.endswith(".tmp")
    }


def resumed_step(out: str) -> int:
    """The step of the "resumed RUN at step N (phase)" line, or 0."""
    lines = [line for line in out.splitlines() if line.startswith("resumed ")]
    return int(lines[0].split()[-2]) if lines else 0


def kill_once(command: list[str], run_dir: Path, mid_save: bool, delay_s: float) -> dict:
    """Start `command` and SIGKILL its whole group (trainer and loader worker): mid-save, as soon
    as a new checkpoint is being written; else `delay_s` after this run's first step."""
    rows_before = len(stats(run_dir)) if (run_dir / "stats.jsonl").exists() else 0
    process = start(command)
    deadline = time.time() + 120
    while len(stats(run_dir) if (run_dir / "stats.jsonl").exists() else []) <= rows_before:
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.02)
    leftovers = saves_in_progress(run_dir)
    deadline = time.time() + (60 if mid_save else delay_s)
    while time.time() < deadline and process.poll() is None:
        if mid_save and saves_in_progress(run_dir) - leftovers:
            break
        time.sleep(0.0005 if mid_save else 0.01)
    during_save = bool(saves_in_progress(run_dir) - leftovers)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    out, _ = process.communicate()
    done = [row["step"] for row in stats(run_dir)[rows_before:]]
    return {"started_at": resumed_step(out), "last_step": max(done), "during_save": during_save}


def test_kill_9_at_random_points_resumes_to_the_same_weights(synthetic_shards, tmp_path):
    """kill -9 of the trainer and its loader worker at random moments and mid-checkpoint; each
    time the same command resumes; the end state equals an uninterrupted run's, bit for bit."""
    kills = int(os.environ.get("GANPAINT_FAULT_KILLS", 8))
    draw = random.Random(11)
    settings = ("schedule.total_steps=200", "checkpoint.every_steps=3", "checkpoint.keep=100")
    run_dir = tmp_path / "killed"
    command = tiny_train_command(synthetic_shards, run_dir, *settings)
    attempts = [kill_once(command, run_dir, k % 2 == 0, draw.uniform(0, 2)) for k in range(kills)]
    status, out, err = run_command(command, timeout=600)
    assert status == 0, err[-3000:]
    reference = tmp_path / "reference"
    status, _, err = run_command(tiny_train_command(synthetic_shards, reference, *settings), 600)
    assert status == 0, err[-3000:]
    # What each kill cost: the steps trained before it, less the step the next run resumed from.
    starts = [attempt["started_at"] for attempt in attempts[1:]] + [resumed_step(out)]
    lost = [a["last_step"] - start for a, start in zip(attempts, starts, strict=True)]
    during_save = sum(attempt["during_save"] for attempt in attempts)
    print(
        f"\nkills tried {kills} ({during_save} during a checkpoint write), resumed "
        f"{sum(1 for step in starts if step)} (the others had no checkpoint yet), steps lost at "
        f"most {max(lost)}"
    )
    assert max(lost) <= 3 and during_save >= 1
    for name in ("generator", "discriminator"):
        expected = load_file(str(reference / "export" / f"{name}.safetensors"))
        actual = load_file(str(run_dir / "export" / f"{name}.safetensors"))
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name
    expected, actual = (
        torch.load(checkpoint.latest(path) / "optimizers.pt", weights_only=True)
        for path in (reference, run_dir)
    )
    for net in ("generator", "discriminator"):
        assert expected[net]["param_groups"] == actual[net]["param_groups"]
        for index, values in expected[net]["state"].items():
            for key, tensor in values.items():
                assert torch.equal(tensor, actual[net]["state"][index][key]), (net, key)
