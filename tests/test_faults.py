"""Fault injection: hostile manifests, damaged checkpoints, corrupt shards, bad settings, signals.

Every case runs real parts (real shards, real checkpoints, real processes). Whatever runs in a
subprocess runs under a timeout that fails the test if the process does not exit: a hang is a
failure, never a stuck test run. Long sweeps (kill -9, 2-process launches) are marked slow.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ganpaint.config import ConfigError
from ganpaint.config import load as load_config
from ganpaint.data.batches import ErrorCount, read_samples
from ganpaint.data.manifest import ManifestError, read_manifest
from ganpaint.errors import UserError
from ganpaint.models.layers import plain_module
from ganpaint.train import checkpoint, integrity
from ganpaint.train.loop import StopSignals, train
from ganpaint.train.setup import build_state, make_backend

ROOT = Path(__file__).parent.parent
TINY = ROOT / "tests" / "scripts" / "tiny.yaml"
SHORT_RUN = {
    "schedule.completion_steps": 2,
    "schedule.discriminator_steps": 1,
    "schedule.total_steps": 4,
    "checkpoint.every_steps": 2,
    "checkpoint.keep": 10,
    "log.every_steps": 1,
}


def stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def run_command(arguments: list[str], timeout: float = 180, **popen) -> tuple[int, str, str]:
    """Run a command in its own session; a process still alive after `timeout` is a hang: the
    whole group is killed and the test fails."""
    process = subprocess.Popen(
        arguments,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        **popen,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"hang: {arguments[3:6]} still running after {timeout} s\n{err[-2000:]}")
    return process.returncode, out, err


def ganpaint(*arguments: str, timeout: float = 180) -> tuple[int, str, str]:
    return run_command([sys.executable, "-m", "ganpaint.cli", *arguments], timeout)


def assert_one_line_error(err: str, expected: str) -> None:
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and expected in errors[0], err[-3000:]


# --- 1. a manifest cannot run a command -------------------------------------------------------


def copy_shards(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def set_shard_name(shard_dir: Path, split: str, name: str) -> None:
    manifest_path = shard_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"][split]["shards"][0]["name"] = name
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "name",
    [
        "pipe:sh payload.sh",
        "pipe:touch MARKER",
        "../elsewhere/train-000000.tar",
        "/tmp/train-000000.tar",
        "file:train-000000.tar",
        "train-000000.tar; touch MARKER",
        "val-000000.tar",  # another split's shard under "train"
    ],
)
def test_manifest_shard_names_are_refused_in_one_line(synthetic_shards, tmp_path, name):
    shards = copy_shards(synthetic_shards, tmp_path / "shards")
    marker = tmp_path / "MARKER"
    (shards / "payload.sh").write_text(f"touch {marker}\n")
    set_shard_name(shards, "train", name.replace("MARKER", str(marker)))
    with pytest.raises(ManifestError, match="refused shard name") as caught:
        read_manifest(shards)
    assert "\n" not in str(caught.value)
    assert not marker.exists()


def test_a_pipe_manifest_never_runs_in_eval_or_train(synthetic_shards, make_config, tmp_path):
    """The reported attack: `--shards .` with a manifest naming `pipe:sh payload.sh`."""
    from test_eval import make_run, run_eval

    shards = copy_shards(synthetic_shards, tmp_path / "shards")
    marker = tmp_path / "MARKER"
    (shards / "payload.sh").write_text(f"touch {marker}\n")
    for split in ("train", "val"):
        set_shard_name(shards, split, "pipe:sh payload.sh")
    run = make_run(make_config(synthetic_shards, **{"run.dir": str(tmp_path / "run")}))
    cwd = os.getcwd()
    os.chdir(shards)
    try:
        assert run_eval(run, Path(".")) == 2
        with pytest.raises(UserError, match="refused shard name"):
            train(make_config(Path("."), **{"run.dir": str(tmp_path / "train")}))
    finally:
        os.chdir(cwd)
    assert not marker.exists()
    # Below the manifest check too: a path string is opened as a file, never as a URL.
    errors = ErrorCount("test")
    with pytest.warns(UserWarning, match="unreadable shard"):
        assert list(read_samples([f"pipe:touch {marker}"], "jpg", errors)) == []
    assert errors.total == 1 and not marker.exists()


# --- 2 + 3. damaged checkpoints: fall back, set aside, or refuse ---------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_shards) -> tuple[Path, dict]:
    """A 4-step GLCIC run with checkpoints at steps 2, 3 (phase end) and 4; its overrides."""
    from conftest import TINY_DEFAULTS

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    overrides = {
        **TINY_DEFAULTS,
        **SHORT_RUN,
        "data.shards": str(synthetic_shards),
        "run.dir": str(run_dir),
    }
    train(load_config(None, [f"{key}={value}" for key, value in overrides.items()]))
    return run_dir, overrides


def copy_run(finished_run, target: Path) -> tuple[Path, object]:
    source, overrides = finished_run
    shutil.copytree(source, target)
    values = {**overrides, "run.dir": str(target)}
    return target, load_config(None, [f"{key}={value}" for key, value in values.items()])


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def wrong_shape(path: Path) -> None:
    tensors = load_file(str(path))
    name = next(iter(tensors))
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, str(path))


DAMAGE = {
    "truncated generator": lambda step: truncate(step / "generator.safetensors"),
    "empty generator": lambda step: (step / "generator.safetensors").write_bytes(b""),
    "garbage optimizers": lambda step: (step / "optimizers.pt").write_bytes(os.urandom(4096)),
    "truncated optimizers": lambda step: truncate(step / "optimizers.pt"),
    "missing discriminator": lambda step: (step / "discriminator.safetensors").unlink(),
    "wrong-shape tensor": lambda step: wrong_shape(step / "generator.safetensors"),
    "no state.json": lambda step: (step / "state.json").unlink(),
}


def test_each_damaged_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path):
    """Every damage, with the integrity record (it catches the damage) and without one (a
    checkpoint from before records: loading it catches the damage)."""
    run_dir, config = copy_run(finished_run, tmp_path / "template")
    state = build_state(config, make_backend(config.run))
    step_3 = load_file(str(run_dir / "checkpoints" / "step-00000003" / "generator.safetensors"))
    tried = fallen_back = 0
    for with_record in (True, False):
        for case, damage in DAMAGE.items():
            case_dir = tmp_path / f"{case}-{with_record}".replace(" ", "_")
            shutil.copytree(run_dir, case_dir)
            steps = case_dir / "checkpoints"
            if not with_record:
                for record in steps.glob("*/complete.json"):
                    record.unlink()
            damage(steps / "step-00000004")
            tried += 1
            step, notes = checkpoint.resume(state, config, case_dir)
            text = " ".join(notes)
            assert step == 3 and "passed over step-00000004" in text, (case, with_record, notes)
            assert "weights_only=False" not in text and "\n" not in text
            assert "kept as step-00000004.damaged-1" in text, (case, text)
            assert (steps / "step-00000004.damaged-1").is_dir()
            assert not (steps / "step-00000004").exists()
            loaded = plain_module(state.generator).state_dict()
            assert all(torch.equal(loaded[key], step_3[key]) for key in step_3), case
            fallen_back += 1
    assert (tried, fallen_back) == (14, 14)


def test_a_run_resumes_past_a_damaged_checkpoint_and_saves_that_step_again(
    finished_run, tmp_path, capsys
):
    run_dir, config = copy_run(finished_run, tmp_path / "run")
    newest = run_dir / "checkpoints" / "step-00000004"
    (newest / "state.json").unlink()
    train(config)
    out = capsys.readouterr().out
    assert "resuming from step-00000003" in out and "passed over step-00000004" in out
    assert checkpoint.saved_steps(run_dir)[-1][0] == 4  # written again, complete
    integrity.verify(newest)
    assert (run_dir / "checkpoints" / "step-00000004.damaged-1").is_dir()


def test_no_usable_checkpoint_is_refused_in_one_line_and_stays_refused(finished_run, tmp_path):
    run_dir, config = copy_run(finished_run, tmp_path / "run")
    for state_file in (run_dir / "checkpoints").glob("step-*/state.json"):
        state_file.unlink()
    rows_before = len(stats(run_dir))
    for _ in range(2):  # the next attempt sees the damaged ones set aside: still refused
        with pytest.raises(UserError, match="no usable checkpoint.*step-00000004") as caught:
            train(config)
        assert "\n" not in str(caught.value) and "remove the damaged ones" in str(caught.value)
    assert len(stats(run_dir)) == rows_before  # nothing was trained from scratch
    assert checkpoint.saved_steps(run_dir) == []


def test_a_checkpoint_without_a_record_still_resumes(finished_run, tmp_path, capsys):
    run_dir, config = copy_run(finished_run, tmp_path / "run")
    for record in (run_dir / "checkpoints").glob("*/complete.json"):
        record.unlink()
    state = build_state(config, make_backend(config.run))
    step, notes = checkpoint.resume(state, config, run_dir)
    assert step == 4 and "no integrity record" in notes[0]


def test_saving_an_existing_step_replaces_it(finished_run, tmp_path):
    run_dir, config = copy_run(finished_run, tmp_path / "run")
    state = build_state(config, make_backend(config.run))
    with torch.no_grad():
        for parameter in state.generator.parameters():
            parameter.fill_(0.25)
    path = checkpoint.save(state, run_dir, 4, config, keep=10)
    integrity.verify(path)
    saved = load_file(str(path / "generator.safetensors"))
    assert all(torch.all(value == 0.25) for key, value in saved.items() if "weight" in key)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step-00000002",
        "step-00000003",
        "step-00000004",
    ]


# --- 4. no hangs -------------------------------------------------------------------------------


def garbage_shards(synthetic_shards: Path, target: Path, splits: tuple[str, ...]) -> Path:
    shards = copy_shards(synthetic_shards, target)
    for split in splits:
        for shard in shards.glob(f"{split}-*.tar"):
            shard.write_bytes(os.urandom(5000))
    return shards


def test_all_train_shards_corrupt_with_a_loader_worker_ends_in_one_line(synthetic_shards, tmp_path):
    shards = garbage_shards(synthetic_shards, tmp_path / "shards", ("train",))
    status, _, err = ganpaint(
        "train",
        "--config",
        str(TINY),
        f"data.shards={shards}",
        f"run.dir={tmp_path / 'run'}",
        "data.workers=1",
        timeout=120,
    )
    assert status == 2
    assert_one_line_error(err, "corrupt samples or shards in a row")


def test_a_garbage_validation_split_is_refused_before_any_work(
    synthetic_shards, make_config, tmp_path
):
    shards = garbage_shards(synthetic_shards, tmp_path / "shards", ("val",))
    config = make_config(shards, **{"data.val_images": 4})
    with pytest.warns(UserWarning), pytest.raises(UserError, match="no image of split 'val'"):
        train(config)
    assert not Path(config.run.dir).exists()


def test_no_validation_images_means_no_validation(synthetic_shards, make_config):
    config = make_config(
        synthetic_shards,
        **{**SHORT_RUN, "data.val_images": 0, "log.image_every_steps": 1},
    )
    run_dir = train(config)
    assert list((run_dir / "samples").iterdir()) == []
    assert (run_dir / "export" / "generator.safetensors").is_file()


# --- 5. SIGINT -----------------------------------------------------------------------------------


def test_first_ctrl_c_asks_for_a_stop_and_a_second_stops_at_once():
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # a launcher relaying the same press
        assert signals.received == signal.SIGINT
        time.sleep(StopSignals.SECOND_PRESS_S + 0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here, between bytecodes


# --- 6. one line instead of a traceback ----------------------------------------------------------


def test_settings_refused_in_one_line_before_any_work(synthetic_shards, make_config, tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- run\n- data\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listed)
    with pytest.raises(ConfigError, match="run.seed"):
        make_config(synthetic_shards, **{"run.seed": -1})
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(UserError, match="exists and is not a directory"):
        train(make_config(synthetic_shards, **{"run.dir": str(a_file)}))
    config = make_config(synthetic_shards, **{"data.val_split": "nope"})
    with pytest.raises(UserError, match="no split 'nope'"):
        train(config)
    assert not Path(config.run.dir).exists()  # no run dir, tb/ or stats.jsonl made


def test_filesystem_errors_are_one_line(synthetic_shards, make_config, tmp_path, capsys):
    """`eval --json` into a missing directory makes it; under a file, it is one line."""
    from test_eval import make_run, run_eval

    run = make_run(make_config(synthetic_shards))
    assert run_eval(run, synthetic_shards, "--json", str(tmp_path / "new" / "dir" / "r.json")) == 0
    assert (tmp_path / "new" / "dir" / "r.json").is_file()
    capsys.readouterr()
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert run_eval(run, synthetic_shards, "--json", str(a_file / "r.json")) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "a_file" in error, error


# --- 7. corrupt samples are counted, as a running total that survives a resume -------------------


def corrupt_some_samples(synthetic_shards: Path, target: Path, count: int) -> Path:
    """A copy whose train shards each have `count` undecodable images (the tars stay valid)."""
    shards = copy_shards(synthetic_shards, target)
    for path in shards.glob("train-*.tar"):
        with tarfile.open(path) as tar:
            members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
        spoiled = 0
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for member, data in members:
                if member.name.endswith(".jpg") and spoiled < count:
                    data, spoiled = b"not a jpeg" * 10, spoiled + 1
                    member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    return shards


def test_corrupt_samples_are_a_running_total_across_resumes(
    synthetic_shards, make_config, tmp_path
):
    shards = corrupt_some_samples(synthetic_shards, tmp_path / "shards", 3)

    def run(name: str, total: int) -> Path:
        overrides = {**SHORT_RUN, "schedule.total_steps": total, "run.dir": str(tmp_path / name)}
        with pytest.warns(UserWarning, match="undecodable sample"):
            return train(make_config(shards, **overrides))

    straight = run("straight", 5)
    run("resumed", 3)  # its last checkpoint (3) is inside the segment that starts at step 2
    resumed = run("resumed", 5)
    totals = [row["health/corrupt_samples"] for row in stats(straight)]
    assert totals == sorted(totals) and totals[-1] > 0
    again = {row["step"]: row["health/corrupt_samples"] for row in stats(resumed)}
    assert [again[step] for step in range(1, 6)] == totals
    saved = json.loads((checkpoint.latest(resumed) / "state.json").read_text())
    assert saved["health"]["corrupt_samples"] == totals[-1]


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


@pytest.mark.slow
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
        pytest.fail(f"hang: still running {timeout} s after the signal")


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_kill_9_at_random_points_resumes_to_the_same_weights(synthetic_shards, tmp_path):
    """kill -9 of the trainer and its loader worker at random moments and mid-checkpoint; each
    time the same command resumes; the end state equals an uninterrupted run's, bit for bit."""
    import random

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
