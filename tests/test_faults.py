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
from ganpaint.training import checkpoint, integrity
from ganpaint.training.loop import StopSignals, train
from ganpaint.training.setup import build_state, make_backend

ROOT = Path(__file__).parent.parent
TINY = ROOT / "tests" / "scripts" / "tiny.yaml"
SHORT_RUN = {  # checkpoints at 2, 3 (the end of phase 1) and 4; phase 2 (D alone) skipped
    "schedule.completion_steps": 3,
    "schedule.discriminator_steps": 0,
    "schedule.total_steps": 4,
    "checkpoint.every_steps": 2,
    "checkpoint.keep": 10,
    "log.every_steps": 1,
}


def stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def spawn(arguments: list[str], **popen) -> subprocess.Popen:
    """`arguments` started in a session of its own (so a hang's whole group can be killed), one
    compute thread, this checkout importable; output captured as text."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(
        arguments,
        text=True,
        start_new_session=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        **{**streams, **popen},
    )


def run_command(arguments: list[str], timeout: float = 180, **popen) -> tuple[int, str, str]:
    """Run a command in its own session; a process still alive after `timeout` is a hang: the
    whole group is killed and the test fails."""
    process = spawn(arguments, **popen)
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


def train_short_run(run_dir: Path, synthetic_shards: Path) -> tuple[Path, dict]:
    """A 4-step GLCIC run with checkpoints at steps 2, 3 and 4; its overrides."""
    from conftest import TINY_DEFAULTS, TINY_FAMILY_SETTINGS

    overrides = {
        **TINY_DEFAULTS,
        **TINY_FAMILY_SETTINGS["glcic"],
        **SHORT_RUN,
        "data.shards": str(synthetic_shards),
        "run.dir": str(run_dir),
    }
    train(load_config(None, [f"{key}={value}" for key, value in overrides.items()]))
    return run_dir, overrides


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_shards) -> tuple[Path, dict]:
    return train_short_run(tmp_path_factory.mktemp("finished") / "run", synthetic_shards)


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


def test_intact_files_that_do_not_load_are_refused_not_set_aside(finished_run, tmp_path):
    """A record that matches files that do not load (another ganpaint, or an edit whose author
    rewrote the record): every older checkpoint would fail alike, so nothing is passed over."""
    run_dir, config = copy_run(finished_run, tmp_path / "run")
    newest = run_dir / "checkpoints" / "step-00000004"
    wrong_shape(newest / "generator.safetensors")
    integrity.write_record(newest)
    state = build_state(config, make_backend(config.run))
    with pytest.raises(UserError, match="match their integrity record but do not load") as caught:
        checkpoint.resume(state, config, run_dir)
    assert "\n" not in str(caught.value) and "size mismatch" in str(caught.value)
    assert newest.is_dir() and not list(newest.parent.glob("*.damaged-*"))


def test_a_checkpoint_without_a_record_still_resumes(finished_run, tmp_path, capsys):
    run_dir, config = copy_run(finished_run, tmp_path / "run")
    for record in (run_dir / "checkpoints").glob("*/complete.json"):
        record.unlink()
    state = build_state(config, make_backend(config.run))
    step, notes = checkpoint.resume(state, config, run_dir)
    assert step == 4 and "no integrity record" in notes[0]


def test_a_damaged_chosen_checkpoint_is_refused_in_one_line_and_left_in_place(
    finished_run, tmp_path, capsys
):
    from ganpaint.cli import main

    run_dir, _ = copy_run(finished_run, tmp_path / "run")
    chosen = run_dir / "checkpoints" / "step-00000003"
    truncate(chosen / "generator.safetensors")
    rows_before = len(stats(run_dir))
    assert main(["train", "--resume-from", str(chosen), "schedule.total_steps=5"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--resume-from")
    assert chosen.is_dir() and not list(chosen.parent.glob("*.damaged-*"))
    assert len(stats(run_dir)) == rows_before  # nothing trained
    # an intact one is taken
    step_2 = run_dir / "checkpoints" / "step-00000002"
    assert main(["train", "--resume-from", str(step_2), "schedule.total_steps=5"]) == 0
    assert "resumed" in capsys.readouterr().out and stats(run_dir)[-1]["step"] == 5


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
        **{
            **SHORT_RUN,
            "schedule.completion_steps": 2,
            "schedule.total_steps": 2,
            "data.val_images": 0,
            "log.image_every_steps": 1,
        },
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


INTERRUPTED_START = """
import os, signal, sys, threading
signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner's `cmd &` starts us ignoring it
from ganpaint.config import DataConfig
from ganpaint.data.stream import train_loader
data = DataConfig(shards=sys.argv[1], image_px=32, resize_min_px=32, resize_max_px=40, workers=1)
stream = train_loader(data, 4, 0, 1, 0, 0)
threading.Timer(float(sys.argv[2]), os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    for _ in range(1000):
        next(stream)
except KeyboardInterrupt:
    sys.exit(130)
"""


def interrupt_while_the_loader_starts(synthetic_shards: Path, delay_s: float) -> None:
    """Ctrl-C while the loader's worker is being started: the process must still exit (a worker
    started but not yet owned used to hold the interpreter's exit for ever)."""
    status, _, err = run_command(
        [sys.executable, "-c", INTERRUPTED_START, str(synthetic_shards), str(delay_s)], 60
    )
    assert status == 130, err[-2000:]


def test_ctrl_c_while_the_loader_starts_does_not_hang(synthetic_shards):
    interrupt_while_the_loader_starts(synthetic_shards, 0.005)


INTERRUPTED_BETWEEN_BATCHES = """
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner's `cmd &` starts us ignoring it
from ganpaint.config import DataConfig
from ganpaint.data.stream import train_loader
data = DataConfig(shards=sys.argv[1], image_px=32, resize_min_px=32, resize_max_px=40, workers=1)
stream = train_loader(data, 4, 0, 1, 0, 0)
try:
    next(stream)
    next(stream)
    os.kill(os.getpid(), signal.SIGINT)  # the stream is suspended between two batches
    time.sleep(5)
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_between_batches_with_the_stream_still_open_does_not_hang(synthetic_shards):
    """The open stream's worker (it ignores SIGTERM) is stopped before multiprocessing's exit
    handler waits for it: it used to wait for ever."""
    status, _, err = run_command(
        [sys.executable, "-c", INTERRUPTED_BETWEEN_BATCHES, str(synthetic_shards)], 60
    )
    assert status == 130, err[-2000:]


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
        overrides = {
            **SHORT_RUN,
            "schedule.completion_steps": total,  # one cheap phase: G alone
            "schedule.total_steps": total,
            "run.dir": str(tmp_path / name),
        }
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
