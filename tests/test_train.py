"""Tiny real runs of the training loop on real shards: phases, run directory, resume, signals, NaN."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ganpaint
from ganpaint import losses
from ganpaint.errors import UserError
from ganpaint.training import checkpoint
from ganpaint.training.loop import TrainingDiverged, train
from ganpaint.training.stop import marker_path

ROOT = Path(__file__).parent.parent

# The centre-predicting families: a 16 px centre hole in 32 px images, Adam.
CENTRE_ADAM = {
    "masks.kind": "center",
    "masks.hole_min_px": 16,
    "masks.hole_max_px": 16,
    "masks.local_px": 16,
    "optim.generator": "adam",
    "optim.discriminator": "adam",
}
FAMILY_OVERRIDES = {
    "glcic": {
        "schedule.completion_steps": 2,
        "schedule.discriminator_steps": 2,
        "schedule.total_steps": 6,
    },
    "context_encoder": {
        **CENTRE_ADAM,
        "optim.generator_lr": 2.5e-4,
        "optim.discriminator_lr": 1e-4,
        "schedule.total_steps": 4,
    },
    "wgan_unet": {
        **CENTRE_ADAM,
        "optim.generator_lr": 2e-3,
        "optim.discriminator_lr": 2e-3,
        "schedule.critic_steps": 2,
        "schedule.total_steps": 4,
    },
    "dcgan": {
        "data.image_px": 64,
        "data.resize_min_px": 64,
        "data.resize_max_px": 64,
        "optim.generator": "adam",
        "optim.discriminator": "adam",
        "optim.generator_lr": 2e-4,
        "optim.discriminator_lr": 2e-4,
        "schedule.total_steps": 4,
    },
}


def stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", list(FAMILY_OVERRIDES))
def test_each_family_trains_through_its_phases(family, synthetic_shards, make_config):
    config = make_config(
        synthetic_shards,
        **{
            "model.family": family,
            "log.every_steps": 1,
            "log.image_every_steps": 2,
            **FAMILY_OVERRIDES[family],
        },
    )
    run_dir = train(config)
    rows = stats(run_dir)
    assert [row["step"] for row in rows] == list(range(1, config.schedule.total_steps + 1))
    expected_phases = {"completion", "discriminator", "joint"} if family == "glcic" else {"joint"}
    assert {row["phase"] for row in rows} == expected_phases
    for row in rows:
        finite = [value for key, value in row.items() if "/" in key]
        assert all(value == value and abs(value) != float("inf") for value in finite), row
    assert (run_dir / "config.yaml").is_file()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert list((run_dir / "samples").glob("step-*.png"))
    steps = [step for step, _ in checkpoint.saved_steps(run_dir)]
    assert steps[-1] == config.schedule.total_steps and len(steps) <= config.checkpoint.keep
    exported = load_file(str(run_dir / "export" / "generator.safetensors"))
    assert exported and all(torch.isfinite(t.float()).all() for t in exported.values())


@pytest.mark.parametrize("family", list(FAMILY_OVERRIDES))
def test_each_family_trains_and_exports_in_bf16(family, synthetic_shards, make_config):
    """The mixed-precision path on the CPU, so a dtype mistake shows here and not on a GPU node:
    every phase under bf16 autocast, then an export that loads and fills in fp32."""
    config = make_config(
        synthetic_shards,
        **{"model.family": family, "run.mixed_precision": "bf16", **FAMILY_OVERRIDES[family]},
    )
    run_dir = train(config)
    rows = stats(run_dir)
    assert rows[-1]["step"] == config.schedule.total_steps
    losses_seen = [value for row in rows for key, value in row.items() if "/" in key]
    assert losses_seen and all(torch.isfinite(torch.tensor(losses_seen)))
    exported = load_file(str(run_dir / "export" / "generator.safetensors"))
    assert {tensor.dtype for tensor in exported.values()} <= {torch.float32, torch.int64}
    model = ganpaint.load(run_dir)
    if family != "dcgan":
        images = torch.rand(2, 3, config.data.image_px, config.data.image_px)
        hole = torch.zeros(2, 1, config.data.image_px, config.data.image_px)
        hole[..., 8:24, 8:24] = 1
        _, completed = model.complete(images, hole)
        assert completed.dtype == torch.float32 and torch.isfinite(completed).all()


def _final_generator(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint.latest(run_dir) / "generator.safetensors"))


def test_interrupted_run_resumes_to_the_same_weights(synthetic_shards, make_config, tmp_path):
    common = {
        "schedule.completion_steps": 3,
        "schedule.discriminator_steps": 2,
        "checkpoint.every_steps": 4,
        "checkpoint.keep": 10,
        "log.every_steps": 1,
    }
    straight = make_config(
        synthetic_shards,
        **common,
        **{"schedule.total_steps": 9, "run.dir": str(tmp_path / "straight")},
    )
    train(straight)
    # The same run stopped at step 6 (inside a data segment and inside phase 3), then re-run.
    first = make_config(
        synthetic_shards,
        **common,
        **{"schedule.total_steps": 6, "run.dir": str(tmp_path / "resumed")},
    )
    train(first)
    resumed = make_config(
        synthetic_shards,
        **common,
        **{"schedule.total_steps": 9, "run.dir": str(tmp_path / "resumed")},
    )
    train(resumed)
    expected, actual = (
        _final_generator(tmp_path / "straight"),
        _final_generator(tmp_path / "resumed"),
    )
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert [r["step"] for r in stats(tmp_path / "resumed")] == list(range(1, 10))


def test_resume_refuses_another_model_shape(synthetic_shards, make_config):
    config = make_config(
        synthetic_shards,
        **{
            "schedule.total_steps": 2,
            "schedule.completion_steps": 2,
            "schedule.discriminator_steps": 0,
        },
    )
    train(config)
    wider = make_config(
        synthetic_shards,
        **{
            "run.dir": config.run.dir,
            "model.width": 16,
            "schedule.total_steps": 3,
            "schedule.completion_steps": 2,
            "schedule.discriminator_steps": 0,
        },
    )
    with pytest.raises(UserError, match="model.width: 8 -> 16"):
        train(wider)


def test_injected_nan_is_skipped_and_counted(synthetic_shards, make_config, monkeypatch):
    real_mse, calls = losses.masked_mse, {"n": 0}

    def mse_with_two_nans(prediction, target, hole_mask=None):
        calls["n"] += 1
        value = real_mse(prediction, target, hole_mask)
        return value * float("nan") if calls["n"] in (2, 3) else value

    monkeypatch.setattr(losses, "masked_mse", mse_with_two_nans)
    config = make_config(
        synthetic_shards,
        **{
            "schedule.total_steps": 5,
            "schedule.completion_steps": 5,
            "schedule.discriminator_steps": 0,
            "log.every_steps": 1,
        },
    )
    run_dir = train(config)
    rows = stats(run_dir)
    assert [row["health/skipped_steps"] for row in rows] == [0, 1, 2, 2, 2]
    state = json.loads((checkpoint.latest(run_dir) / "state.json").read_text())
    assert state["health"]["skipped"] == 2
    weights = _final_generator(run_dir)
    assert all(torch.isfinite(t.float()).all() for t in weights.values())


def test_nan_storm_stops_the_run_and_keeps_the_last_checkpoint(
    synthetic_shards, make_config, monkeypatch
):
    config = make_config(
        synthetic_shards,
        **{
            "schedule.total_steps": 8,
            "schedule.completion_steps": 8,
            "schedule.discriminator_steps": 0,
            "checkpoint.every_steps": 2,
            "run.max_bad_steps": 3,
        },
    )
    real_mse, calls = losses.masked_mse, {"n": 0}

    def nan_after_two(prediction, target, hole_mask=None):
        calls["n"] += 1
        value = real_mse(prediction, target, hole_mask)
        return value * float("nan") if calls["n"] > 2 else value

    monkeypatch.setattr(losses, "masked_mse", nan_after_two)
    with pytest.raises(
        TrainingDiverged, match=r"3 non-finite 'generator' losses in a row in phase 1"
    ):
        train(config)
    # Steps 3-5 were skipped, so the step-4 checkpoint holds the step-2 weights: still finite.
    assert [step for step, _ in checkpoint.saved_steps(config.run.dir)] == [2, 4]
    weights = _final_generator(Path(config.run.dir))
    assert all(torch.isfinite(t.float()).all() for t in weights.values())


def test_sigterm_checkpoints_exits_zero_and_resumes(synthetic_shards, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "ganpaint.cli",
        "train",
        "--config",
        str(ROOT / "tests" / "scripts" / "tiny.yaml"),
        f"data.shards={synthetic_shards}",
        f"run.dir={run_dir}",
        "data.workers=1",
        "schedule.total_steps=400",
        "log.every_steps=1",
        "checkpoint.every_steps=1000",
    ]
    # A session of its own: the signal goes to the whole process group, loader worker included,
    # as `timeout` or a shell would send it.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.time() + 120
    while not (run_dir / "stats.jsonl").exists() or not (run_dir / "stats.jsonl").read_text():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    # The stop checkpoint is the newest (phase-end checkpoints may precede it).
    stopped_at = checkpoint.saved_steps(run_dir)[-1][0]
    assert 0 < stopped_at < 400 and "stop signal" in out
    marker = f"SIGTERM {stopped_at} checkpoints/step-{stopped_at:08d}\n"
    assert marker_path(run_dir).read_text() == marker
    again = subprocess.run(
        command[:-3]
        + [
            "schedule.total_steps=" + str(stopped_at + 2),
            "log.every_steps=1",
            "checkpoint.every_steps=1000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert f"resumed {run_dir} at step {stopped_at}" in again.stdout
    assert stats(run_dir)[-1]["step"] == stopped_at + 2


def test_signal_held_back_during_start_up_stops_before_the_first_step(
    synthetic_shards, make_config
):
    config = make_config(synthetic_shards, **FAMILY_OVERRIDES["glcic"])
    # As under the SLURM node supervisor: the stop signals blocked from the start, one pending.
    stops = {signal.SIGTERM, signal.SIGUSR1}
    handlers = {number: signal.getsignal(number) for number in stops}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)
        run_dir = train(config)
        assert stops <= signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the mask it found
        assert {signal.getsignal(number) for number in stops} == {signal.SIG_IGN}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for number, handler in handlers.items():
            signal.signal(number, handler)
    assert marker_path(run_dir).read_text() == "SIGUSR1 0 -\n"
    assert checkpoint.latest(run_dir) is None and not (run_dir / "export").exists()


def test_bad_shard_dir_fails_before_any_work(make_config, tmp_path):
    config = make_config(tmp_path / "no_shards")
    with pytest.raises(UserError, match="no_shards"):
        train(config)
    assert not Path(config.run.dir).exists()


def test_resume_by_run_directory_keeps_data_and_records_changes(
    synthetic_shards, make_config, tmp_path, capsys
):
    from ganpaint.cli import main

    config = make_config(
        synthetic_shards,
        **{
            "schedule.total_steps": 2,
            "schedule.completion_steps": 1,
            "schedule.discriminator_steps": 1,
        },
    )
    train(config)
    run_dir = Path(config.run.dir)
    # the README's flow: continue the run, longer, with another learning rate
    assert (
        main(
            ["train", "--resume", str(run_dir), "schedule.total_steps=3", "optim.generator_lr=0.5"]
        )
        == 0
    )
    changes = [
        json.loads(line) for line in (run_dir / "config_changes.jsonl").read_text().splitlines()
    ]
    assert changes == [
        {
            "step": 2,
            "changes": {"optim.generator_lr": [1.0, 0.5], "schedule.total_steps": [2, 3]},
        }
    ]
    assert "resumed" in capsys.readouterr().out
    # the data (or the model) of a run cannot change, and config.yaml keeps its source
    other = str(tmp_path / "elsewhere")
    assert main(["train", "--resume", str(run_dir), f"data.shards={other}"]) == 2
    assert "data.shards" in capsys.readouterr().err
    assert str(synthetic_shards) in (run_dir / "config.yaml").read_text()
    # a chosen checkpoint
    first = run_dir / "checkpoints" / "step-00000001"
    assert first.is_dir()
    assert main(["train", "--resume-from", str(first), "schedule.total_steps=3"]) == 0
    assert "resumed" in capsys.readouterr().out


def test_other_experiment_trackers_get_the_scalars(
    synthetic_shards, make_config, tmp_path, monkeypatch
):
    """accelerate's trackers, here wandb offline (writes files, no network)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = make_config(
        synthetic_shards,
        **{
            "schedule.total_steps": 2,
            "schedule.completion_steps": 1,
            "schedule.discriminator_steps": 1,
            "log.every_steps": 1,
            "log.trackers": "[tensorboard,wandb]",
        },
    )
    run_dir = train(config)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert any((run_dir / "tb").iterdir())  # TensorBoard still written


def test_a_tracker_that_is_not_installed_is_one_line(synthetic_shards, make_config):
    from ganpaint.config import ConfigError

    with pytest.raises(ConfigError, match="log.trackers.*aim is not installed: pip install aim"):
        make_config(synthetic_shards, **{"log.trackers": "[aim]"})
    with pytest.raises(ConfigError, match="log.trackers.*'nope' is not one of"):
        make_config(synthetic_shards, **{"log.trackers": "[nope]"})
