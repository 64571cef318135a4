"""What a training run may be trusted with: it never saves non-finite weights, one trainer per run
directory, no rendezvous without an end, a full disk is one line that harms no checkpoint, and
every error line is short.

Real parts throughout: real shards, real checkpoints and real `ganpaint train` processes under a
timeout (a hang fails the test). The full-disk cases mount a small tmpfs, which needs root (CI
runs as root); elsewhere they skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_faults import ROOT, TINY, assert_one_line_error, ganpaint, run_command, spawn, stats

from ganpaint import config as config_lib
from ganpaint.config import ConfigError
from ganpaint.errors import (
    MAX_ERROR_LINE,
    OutOfSpace,
    UserError,
    WeightsNotFinite,
    describe_os_error,
    error_line,
)
from ganpaint.infer.export import save_export
from ganpaint.models.layers import plain_module
from ganpaint.training import checkpoint, integrity, loop
from ganpaint.training import lock as lock_module
from ganpaint.training.rendezvous import check_launch_variables
from ganpaint.training.rollback import WeightsDiverged
from ganpaint.training.setup import build_state, make_backend

# Six steps of phase 1 (the generator alone): checkpoints at 2, 4 and 6.
SIX_STEPS = {
    "schedule.completion_steps": 6,
    "schedule.discriminator_steps": 0,
    "schedule.total_steps": 6,
    "checkpoint.every_steps": 2,
    "checkpoint.keep": 10,
    "log.every_steps": 1,
    "data.val_images": 0,
}


def tiny_train(shards: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [
        "train",
        "--config",
        str(TINY),
        f"data.shards={shards}",
        f"run.dir={run_dir}",
        *overrides,
    ]


def all_finite(file: Path) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in load_file(str(file)).values())


# --- 1. non-finite weights are never saved -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.generator_lr=inf", "'optim.generator_lr': must be finite and > 0"),
        ("optim.discriminator_lr=nan", "'optim.discriminator_lr': must be finite and > 0"),
        ("optim.generator_lr=0", "'optim.generator_lr': must be > 0"),
        ("optim.discriminator_lr=-1", "'optim.discriminator_lr': must be > 0"),
        ("optim.beta1=1.5", "'optim.beta1': must be in [0, 1)"),
        ("optim.beta2=1", "'optim.beta2': must be in [0, 1)"),
        ("optim.beta1=nan", "'optim.beta1': must be in [0, 1)"),
        ("data.batch_size=1000000000", "'data.batch_size': must be at most 65536"),
        ("run.rendezvous_timeout_s=0", "'run.rendezvous_timeout_s': must be > 0"),
        ("run.max_rollbacks=-1", "'run.max_rollbacks': must be >= 0"),
    ],
)
def test_settings_that_train_nan_or_cannot_allocate_are_refused_in_one_line(override, expected):
    with pytest.raises(ConfigError) as caught:
        config_lib.load(TINY, [override])
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_a_learning_rate_that_overflows_the_weights_saves_nothing(synthetic_shards, tmp_path):
    """A finite rate whose first update overflows: every loss after it is NaN and skipped, so the
    loss guard alone would have sealed NaN checkpoints and exported NaN weights with status 0."""
    run_dir = tmp_path / "run"
    status, _, err = ganpaint(*tiny_train(synthetic_shards, run_dir, "optim.generator_lr=1e38"))
    assert status == 2, err[-3000:]
    assert_one_line_error(err, "generator weights hold inf or NaN at step 2")
    assert "no checkpoint to roll back to" in err
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "export").exists()


def poison_steps(monkeypatch, calls_to_poison) -> list[int]:
    """Make the weights of the generator NaN after the step-function calls numbered
    `calls_to_poison(call)` (1-based), as an overflowing update would; returns the call count."""
    count = [0]

    def wrap(step_function):
        def poisoned(state, settings, batches):
            losses = step_function(state, settings, batches)
            count[0] += 1
            if calls_to_poison(count[0]):
                with torch.no_grad():
                    next(plain_module(state.generator).parameters()).fill_(float("nan"))
            return losses

        return poisoned

    for kind, step_function in list(loop.STEP_FUNCTIONS.items()):
        monkeypatch.setitem(loop.STEP_FUNCTIONS, kind, wrap(step_function))
    return count


def test_weights_gone_non_finite_roll_back_and_training_goes_on(
    synthetic_shards, make_config, monkeypatch, capsys
):
    poison_steps(monkeypatch, lambda call: call == 3)  # once, in step 3
    config = make_config(synthetic_shards, **SIX_STEPS)
    run_dir = loop.train(config)
    out = capsys.readouterr().out
    assert "the generator weights hold inf or NaN at step 4: not saved; rolled back to " in out
    assert "step-00000002 (rollback 1 of 2)" in out
    steps = [step for step, _ in checkpoint.saved_steps(run_dir)]
    assert steps == [2, 4, 6]
    for _, path in checkpoint.saved_steps(run_dir):
        integrity.verify(path)
        assert all_finite(path / "generator.safetensors")
    assert all_finite(run_dir / "export" / "generator.safetensors")
    assert [row["step"] for row in stats(run_dir)] == [1, 2, 3, 4, 5, 6]  # rewound, not doubled


def test_a_divergence_that_comes_back_stops_once_the_rollbacks_are_spent(
    synthetic_shards, make_config, monkeypatch
):
    # Step 3 goes non-finite every time it is trained: calls 3, 5, 7 (steps 3, 4 in between).
    poison_steps(monkeypatch, lambda call: call >= 3 and call % 2 == 1)
    config = make_config(synthetic_shards, **SIX_STEPS)
    with pytest.raises(WeightsDiverged) as caught:
        loop.train(config)
    message = str(caught.value)
    assert "again after 2 rollback(s) (run.max_rollbacks=2)" in message and "\n" not in message
    assert "the last good checkpoint step-00000002 is kept" in message
    run_dir = Path(config.run.dir)
    assert [step for step, _ in checkpoint.saved_steps(run_dir)] == [2]
    assert not list((run_dir / "checkpoints").glob("*.tmp")) and not (run_dir / "export").exists()
    assert checkpoint.resume(build_state(config, make_backend(config.run)), config, run_dir)[0] == 2


def test_the_finite_check_covers_optimiser_state(synthetic_shards, make_config, tmp_path):
    """Adam's moments can overflow while the weights are still finite: that state is not saved."""
    config = make_config(synthetic_shards, **{"optim.generator": "adam"})
    state = build_state(config, make_backend(config.run))
    parameter = next(plain_module(state.generator).parameters())
    state.generator_optimizer.state[parameter] = {
        "step": torch.tensor(1.0),
        "exp_avg": torch.zeros_like(parameter),
        "exp_avg_sq": torch.full_like(parameter, float("inf")),
    }
    with pytest.raises(WeightsNotFinite, match="the generator optimiser state hold inf or NaN"):
        checkpoint.save(state, tmp_path / "run", 1, config, keep=3)
    assert not (tmp_path / "run" / "checkpoints" / "step-00000001.tmp").exists()


def test_an_export_is_refused_with_non_finite_weights_and_written_as_a_set(
    synthetic_shards, make_config, tmp_path, monkeypatch
):
    from ganpaint.infer import export
    from ganpaint.models import build_nets

    config = make_config(synthetic_shards)
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    target = tmp_path / "export"
    save_export(target, nets.generator, nets.discriminator, config, (0.5, 0.5, 0.5), 1)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    assert sorted(before) == ["config.yaml", "discriminator.safetensors", "generator.safetensors"]
    with torch.no_grad():
        next(nets.discriminator.parameters()).fill_(float("inf"))
    with pytest.raises(WeightsNotFinite, match="discriminator.safetensors: refused"):
        save_export(target, nets.generator, nets.discriminator, config, (0.5, 0.5, 0.5), 2)
    # A failure after the first file is written: the previous export stays whole.
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    real_save_file, written = export.save_file, []

    def failing_second(state, path, metadata=None):
        written.append(path)
        if len(written) == 2:
            raise OSError(5, "Input/output error")
        real_save_file(state, path, metadata=metadata)

    monkeypatch.setattr(export, "save_file", failing_second)
    with pytest.raises(OSError):
        save_export(target, nets.generator, nets.discriminator, config, (0.5, 0.5, 0.5), 3)
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["export"]  # no staging left


POISON_RANK_ONE = """
import os, sys
import torch
from ganpaint import config as config_lib
from ganpaint.training import loop
from ganpaint.training.distributed import shutdown

calls = [0]


def wrap(step_function):
    def poisoned(state, settings, batches):
        losses = step_function(state, settings, batches)
        calls[0] += 1
        if calls[0] == 3 and os.environ["RANK"] == "1":  # this rank's state only
            held = state.backend.held_tensors(state)["generator optimiser state"]
            with torch.no_grad():
                next(tensor for tensor in held if tensor.dim()).fill_(float("nan"))
        return losses

    return poisoned


for kind, step_function in list(loop.STEP_FUNCTIONS.items()):
    loop.STEP_FUNCTIONS[kind] = wrap(step_function)
loop.train(config_lib.load(sys.argv[1], sys.argv[2:]))
shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


@pytest.mark.parametrize("engine", ["ddp", pytest.param("deepspeed", marks=pytest.mark.slow)])
def test_state_gone_non_finite_on_one_rank_rolls_every_rank_back(
    engine, synthetic_shards, tmp_path
):
    """Rank 1's optimiser state alone goes NaN in step 3: at the step-4 save every rank agrees
    (DeepSpeed: rank 1's ZeRO partition), none saves, all roll back to step 2 and finish."""
    from test_distributed import launch

    script = tmp_path / "poison.py"
    script.write_text(POISON_RANK_ONE)
    run_dir = tmp_path / "run"
    arguments = [str(TINY), f"data.shards={synthetic_shards}", f"run.dir={run_dir}"]
    arguments += [f"{key}={value}" for key, value in SIX_STEPS.items()]
    if engine == "ddp":
        done = launch(script, *arguments)
    else:
        pytest.importorskip("deepspeed")
        from test_deepspeed import accelerate_deepspeed

        done = accelerate_deepspeed(
            "deepspeed_zero2.yaml", script, *arguments, "run.mixed_precision=bf16"
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the generator optimiser state hold inf or NaN at step 4: not saved" in done.stdout
    assert "rolled back to step-00000002 (rollback 1 of 2)" in done.stdout
    assert [step for step, _ in checkpoint.saved_steps(run_dir)] == [2, 4, 6]
    for net in ("generator", "discriminator"):
        assert all_finite(run_dir / "export" / f"{net}.safetensors")


# --- 2. one trainer per run directory ------------------------------------------------------------


def wait_for_lock_holder(run_dir: Path, process: subprocess.Popen, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the first trainer ended before it took the lock"
        try:
            holder = json.loads((run_dir / lock_module.LOCK_NAME).read_text())
            if holder["pid"] == process.pid:
                return holder
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError("the first trainer never took the lock")


def start(arguments: list[str], log: Path) -> subprocess.Popen:
    """`ganpaint` in the background, its output to `log`: a pipe nobody reads while it trains
    would fill and stop it."""
    with log.open("w") as output:
        return spawn(
            [sys.executable, "-m", "ganpaint.cli", *arguments], stdout=output, stderr=output
        )


def test_a_second_trainer_of_a_run_dir_is_refused_while_the_first_trains_on(
    synthetic_shards, tmp_path
):
    run_dir = tmp_path / "run"
    log = tmp_path / "first.log"
    first = start(tiny_train(synthetic_shards, run_dir, "schedule.total_steps=100000"), log)
    try:
        holder = wait_for_lock_holder(run_dir, first)
        status, _, err = ganpaint(*tiny_train(synthetic_shards, run_dir))
        assert status == 2, err[-3000:]
        assert_one_line_error(err, f"is being trained by pid {first.pid} on host ")
        assert holder["since"] in err and holder["host"] == socket.gethostname()
        rows = len(stats(run_dir)) if (run_dir / "stats.jsonl").exists() else 0
        deadline = time.monotonic() + 60
        while len(stats(run_dir)) <= rows + 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.poll() is None and len(stats(run_dir)) > rows + 2  # it trains on
        first.send_signal(signal.SIGTERM)  # stops at its next tick with a checkpoint
        first.wait(timeout=120)
        output = log.read_text()
        assert first.returncode == 0 and "stop signal: checkpoint saved" in output, output[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()


LOCK_AND_WAIT = """
import sys, time
from ganpaint.training.lock import acquire
held = acquire(sys.argv[1])  # kept: the lock lives as long as its file object
print("locked", flush=True)
time.sleep(600)
"""


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the run directory's lock and waits (prints "locked")."""
    return subprocess.Popen(
        [sys.executable, "-c", LOCK_AND_WAIT, str(run_dir)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_a_lock_left_by_a_killed_trainer_is_taken_over(synthetic_shards, make_config, capsys):
    config = make_config(synthetic_shards, **SIX_STEPS)
    run_dir = Path(config.run.dir)
    holder = hold_lock(run_dir)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(lock_module.RunDirectoryBusy, match=f"pid {holder.pid} on host"):
            loop.train(config)
    finally:
        holder.kill()  # SIGKILL: the kernel releases its flock; its record stays in the file
        holder.wait()
    assert json.loads((run_dir / ".lock").read_text())["pid"] == holder.pid
    loop.train(config)
    out = capsys.readouterr().out
    assert f"took over {run_dir / '.lock'} from pid {holder.pid} on host" in out
    assert (run_dir / ".lock").read_text() == ""  # a clean end leaves no holder behind
    assert checkpoint.saved_steps(run_dir)[-1][0] == 6


def test_every_rank_of_a_launch_refuses_a_locked_run_dir(synthetic_shards, tmp_path):
    """Rank 0 takes the lock; rank 1 learns through a collective that it failed: both stop."""
    from test_distributed import launch

    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = launch(ROOT / "train.py", *tiny_train(synthetic_shards, run_dir)[1:])
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert any(
        line.startswith("train.py (rank 0): error: ") and f"pid {holder.pid} on host" in line
        for line in errors
    ), done.stderr[-3000:]
    assert any(line.startswith("train.py (rank 1): error: ") for line in errors), done.stderr
    # The launcher reports its failed child with a traceback of its own; ganpaint's code has none.
    assert f'File "{ROOT / "ganpaint"}' not in done.stderr, done.stderr[-3000:]
    assert not (run_dir / "checkpoints").exists()


def test_the_lock_is_exclusive_within_a_process_too(tmp_path):
    first, note = lock_module.acquire(tmp_path / "run")
    assert note is None
    with pytest.raises(lock_module.RunDirectoryBusy, match=f"pid {os.getpid()}"):
        lock_module.acquire(tmp_path / "run")
    first.release()
    second, note = lock_module.acquire(tmp_path / "run")
    assert note is None  # released cleanly: nothing to take over
    second.release()


def test_a_forked_loader_worker_does_not_hold_the_lock(tmp_path):
    """DataLoader workers are forked after the lock is taken; one that outlives its trainer (a
    kill -9) must not keep the run directory locked against the trainer's restart."""
    held, _ = lock_module.acquire(tmp_path / "run")
    ready, started = os.pipe()
    child = os.fork()
    if child == 0:  # the worker (its fork handlers have run): says so, and lingers
        os.write(started, b"x")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"
        held.release()
        again, _ = lock_module.acquire(tmp_path / "run")
        again.release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(ready)
        os.close(started)


# --- 3. no wait without an end -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_world_size_without_the_other_launcher_variables_is_refused():
    check_launch_variables({"WORLD_SIZE": "1"})
    full = {
        "WORLD_SIZE": "2",
        "RANK": "1",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1",
    }
    check_launch_variables(full)
    with pytest.raises(ConfigError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are not"):
        check_launch_variables({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="but MASTER_PORT is not set"):
        check_launch_variables({**full, "MASTER_PORT": ""})


def launch_alone(shards: Path, run_dir: Path, environ: dict, monkeypatch) -> tuple[int, str, float]:
    """`ganpaint train` alone in a launcher's `environ`: (status, stderr, seconds it took)."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)  # for the child only: nothing here reads them
    started = time.monotonic()
    status, _, err = ganpaint(
        *tiny_train(shards, run_dir, "run.rendezvous_timeout_s=3"), timeout=90
    )
    return status, err, time.monotonic() - started


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_rendezvous_that_cannot_complete_ends_in_one_line_within_its_timeout(
    synthetic_shards, tmp_path, rank, monkeypatch
):
    """A stray launcher environment: rank 1 finds no rank 0, rank 0 waits for a rank 1 that never
    comes. Each ends non-zero in one line a few seconds past its timeout, instead of for ever."""
    environ = {
        "WORLD_SIZE": "2",
        "RANK": rank,
        "LOCAL_RANK": rank,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    status, err, elapsed = launch_alone(synthetic_shards, tmp_path / "run", environ, monkeypatch)
    assert status == 2, err[-3000:]
    expected = "rank 0 did not answer within 3 s" if rank == "1" else "did not form within 3 s"
    assert_one_line_error(err, expected)
    assert elapsed < 60
    assert not (tmp_path / "run").exists()


COLLECTIVE_AFTER_A_LONG_WAIT = """
import os, sys, time
import torch.distributed as dist
from ganpaint.config import RunConfig
from ganpaint.training.setup import make_backend

make_backend(RunConfig(cpu=True, rendezvous_timeout_s=float(sys.argv[1])))
if dist.get_rank() == 0:
    time.sleep(3 * float(sys.argv[1]))  # validating, compiling, writing a checkpoint
dist.barrier()
# one write: the two ranks share the pipe, and print writes its pieces apart
os.write(1, f"rank {dist.get_rank()} past the barrier\\n".encode())
dist.destroy_process_group()
os._exit(0)
"""


def test_the_rendezvous_timeout_does_not_bound_later_collectives(tmp_path):
    """A rank may wait at a collective far longer than the rendezvous took: that wait keeps
    torch's default timeout (with the rendezvous timeout of 2 s the barrier would fail)."""
    script = tmp_path / "wait.py"
    script.write_text(COLLECTIVE_AFTER_A_LONG_WAIT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", str(script), "2"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(done.stdout.split("\n"))[-2:] == [
        "rank 0 past the barrier",
        "rank 1 past the barrier",
    ]


def test_world_size_alone_is_one_line_not_a_traceback(synthetic_shards, tmp_path, monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    status, err, _ = launch_alone(
        synthetic_shards, tmp_path / "run", {"WORLD_SIZE": "2"}, monkeypatch
    )
    assert status == 2, err[-3000:]
    assert_one_line_error(err, "WORLD_SIZE is 2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT")


# --- 4. a full disk ------------------------------------------------------------------------------


def mount_tmpfs(directory: Path, size: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB file system at tmp_path/disk (unmounted after the test)."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "24M")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    """A ballast file that leaves about `leave_bytes` free on `disk`."""
    ballast = disk / "ballast"
    size = max(0, shutil.disk_usage(disk).free - leave_bytes)
    with open(ballast, "wb") as stream:
        stream.truncate(0)
        for _ in range(size // (1 << 20)):
            stream.write(b"\0" * (1 << 20))
        stream.write(b"\0" * (size % (1 << 20)))
    return ballast


def assert_no_partial_files(run_dir: Path) -> None:
    leftovers = [path.name for path in run_dir.rglob("*") if ".tmp" in path.name]
    assert leftovers == [], leftovers


WIDE = [
    "model.width=32",
    "model.disc_width=32",
    "model.fc_features=256",
    "checkpoint.every_steps=2",
]


def test_a_checkpoint_that_does_not_fit_ends_in_one_line_and_keeps_the_last_one(
    synthetic_shards, small_disk, tmp_path
):
    """Step 2's checkpoint (22 MB) fits on the 24 MB disk, step 4's does not."""
    run_dir = small_disk / "run"
    status, _, err = ganpaint(*tiny_train(synthetic_shards, run_dir, *WIDE))
    assert status == 2, err[-3000:]
    assert_one_line_error(err, f"{run_dir / 'checkpoints' / 'step-00000004'}: no space left")
    assert "MB free" in err and "MB needed" in err and "step-00000002 is kept" in err
    assert [step for step, _ in checkpoint.saved_steps(run_dir)] == [2]
    integrity.verify(run_dir / "checkpoints" / "step-00000002")
    assert_no_partial_files(run_dir)
    assert not (run_dir / "export").exists()
    # Resumable: the same run, moved where there is room, goes on from step 2 to the end.
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    status, out, err = ganpaint("train", "--resume", str(moved))
    assert status == 0, err[-3000:]
    assert "resumed" in out and "at step 2" in out
    assert checkpoint.saved_steps(moved)[-1][0] == 6 and (moved / "export").is_dir()


def test_a_write_that_runs_out_of_space_removes_its_partial_files(
    synthetic_shards, make_config, small_disk, monkeypatch
):
    """The estimate passes (another process fills the disk meanwhile): safetensors and torch.save
    fail with their own errors, reported as the same one line, step-N.tmp removed."""
    from ganpaint.training.backend import DDPBackend

    monkeypatch.setattr(DDPBackend, "checkpoint_bytes", lambda self, state: 0)
    monkeypatch.setattr(checkpoint, "CHECKPOINT_SLACK_BYTES", 0)
    config = make_config(synthetic_shards, **{**SIX_STEPS, "run.dir": str(small_disk / "run")})
    state = build_state(config, make_backend(config.run))
    for parameter in plain_module(state.generator).parameters():  # as after a step: 0.8 MB
        state.generator_optimizer.state[parameter] = {
            "step": torch.tensor(1.0),
            "square_avg": torch.zeros_like(parameter),
            "acc_delta": torch.zeros_like(parameter),
        }
    checkpoint.save(state, small_disk / "run", 2, config, keep=10)
    for leave in (200_000, 700_000):  # out of space in the generator, then in optimizers.pt
        fill(small_disk, leave)
        with pytest.raises(OutOfSpace) as caught:
            checkpoint.save(state, small_disk / "run", 4, config, keep=10)
        message = str(caught.value)
        assert "step-00000004.tmp: no space left on device (" in message, message
        assert "\n" not in message and "the newest checkpoint step-00000002 is kept" in message
        assert_no_partial_files(small_disk / "run")
        integrity.verify(small_disk / "run" / "checkpoints" / "step-00000002")
        (small_disk / "ballast").unlink()


def test_an_export_that_does_not_fit_leaves_the_previous_one_whole(
    synthetic_shards, make_config, small_disk, monkeypatch
):
    from ganpaint import files
    from ganpaint.infer import export
    from ganpaint.models import build_nets

    config = make_config(synthetic_shards, **{"model.width": 32, "model.disc_width": 32})
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    target = small_disk / "export"
    save_export(target, nets.generator, nets.discriminator, config, (0.5, 0.5, 0.5), 1)
    before = {path.name: path.read_bytes() for path in target.iterdir()}
    fill(small_disk, 300_000)
    with pytest.raises(OutOfSpace, match=f"{small_disk}: no space left on device .*needed"):
        save_export(target, nets.generator, nets.discriminator, config, (0.5, 0.5, 0.5), 2)
    monkeypatch.setattr(export, "check_space", lambda path, needed: None)  # filled meanwhile
    with pytest.raises(OutOfSpace, match=r"export.tmp-\d+: no space left on device \("):
        save_export(target, nets.generator, nets.discriminator, config, (0.5, 0.5, 0.5), 2)
    assert {path.name: path.read_bytes() for path in target.iterdir()} == before
    assert sorted(path.name for path in small_disk.iterdir()) == ["ballast", "export"]
    assert files.is_out_of_space(RuntimeError("unexpected pos 576 vs 534"), small_disk)


def test_a_full_tensorboard_disk_ends_in_one_line_naming_it(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    mount_tmpfs(run_dir / "tb", "12k")
    try:
        status, _, err = ganpaint(
            *tiny_train(synthetic_shards, run_dir, "schedule.total_steps=200")
        )
    finally:
        subprocess.run(["umount", "-l", str(run_dir / "tb")], check=False)
    assert status == 2, err[-3000:]
    assert_one_line_error(err, f"{run_dir / 'tb'}: no space left on device (")
    assert "Exception in thread" not in err


def test_a_disk_full_os_error_says_how_much_space_is_left(tmp_path):
    line = describe_os_error(OSError(28, "No space left on device", str(tmp_path / "a" / "b")))
    assert (
        line.startswith(f"{tmp_path / 'a' / 'b'}: No space left on device (") and " free)" in line
    )


# --- 5. error lines are capped -------------------------------------------------------------------


def test_an_error_line_is_capped_in_the_middle():
    message = "start " + "x" * 5000 + "\nsecond line: what to do"
    line = error_line("ganpaint", message)
    assert len(line) == MAX_ERROR_LINE and "\n" not in line
    assert line.startswith("ganpaint: error: start xxx") and line.endswith("what to do")
    assert error_line("ganpaint", "short") == "ganpaint: error: short"


@pytest.mark.parametrize("entry", ["cli", "train.py"])
def test_a_long_error_is_one_short_line_through_each_entry_point(entry, tmp_path):
    huge = str(tmp_path / ("x" * 3000)) + ".yaml"
    program = ["-m", "ganpaint.cli", "train"] if entry == "cli" else [str(ROOT / "train.py")]
    status, _, err = run_command([sys.executable, *program, "--config", huge], 120)
    assert status == 2, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) <= MAX_ERROR_LINE and " ... " in lines[0], err[:500]


def test_a_user_error_of_any_length_stays_one_line(monkeypatch, capsys):
    from ganpaint import cli

    def refuse(**_):
        raise UserError("bad value " + "y" * 2000)

    monkeypatch.setattr(loop, "train_command", refuse)
    assert cli.main(["train", "--config", "demo"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and len(err.strip()) <= MAX_ERROR_LINE
