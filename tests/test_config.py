"""Config loading: layers merge in order, and every kind of bad input fails at load in one line."""

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from ganpaint import config as config_lib
from ganpaint.config import ConfigError
from ganpaint.models import registry

CONFIGS = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_preset_loads_and_validates(path):
    config = config_lib.load(path)
    assert config.model.family in registry.names()


def test_layers_merge_in_order(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data: {batch_size: 32, image_px: 64}\nmodel: {width: 16}\n")
    config = config_lib.load(yaml_file, ["data.batch_size=8"])
    assert config.data.batch_size == 8  # override beats file
    assert config.model.width == 16  # file beats default
    assert config.model.disc_width == config_lib.ModelConfig().disc_width  # default kept


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["data.nope=1"], "data.nope"),
        (["data.batch_size=many"], "data.batch_size"),
        (["model.family=vae"], "model.family"),
        (["masks.local_px=128"], "masks.local_px"),
        (["masks.hole_max_px=40"], "masks.hole_max_px"),
        (["schedule.total_steps=10"], "schedule.total_steps"),
        (["data.image_px=40"], "data.image_px"),
        (["data.resize_min_px=32"], "data.resize_min_px"),
        (["loss.label_smoothing=0.7"], "loss.label_smoothing"),
        (["data.on_bad_shard=ignore"], "data.on_bad_shard"),
        (["data.remote_timeout_s=0"], "data.remote_timeout_s"),
        (["data.cache_max_gb=nan"], "data.cache_max_gb"),
        (["data.batch_size=15", "optim.grad_accum_steps=2"], "data.batch_size"),
        (["model.family=context_encoder"], "masks.kind"),
        (["batch_size"], "batch_size"),
    ],
)
def test_bad_input_names_the_key_in_one_line(overrides, key):
    with pytest.raises(ConfigError) as caught:
        config_lib.load(None, overrides)
    message = str(caught.value)
    assert key in message and "\n" not in message


def test_batch_must_divide_over_processes():
    config = config_lib.load(None, ["data.batch_size=6"])
    config_lib.validate(config, world_size=2)
    with pytest.raises(ConfigError, match="4 processes"):
        config_lib.validate(config, world_size=4)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config_lib.load(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: {batch_size: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config_lib.load(broken)


def test_save_round_trip_and_shaping_differences(tmp_path):
    config = config_lib.load(None, ["model.width=16", "optim.generator_lr=0.5"])
    config_lib.save(config, tmp_path / "config.yaml")
    assert config_lib.load(tmp_path / "config.yaml") == config
    assert config_lib.from_dict(config_lib.to_dict(config)) == config
    assert pickle.loads(pickle.dumps(config)) == config  # the family's sections pickle too
    other = config_lib.load(None, ["model.width=32", "optim.generator_lr=0.1"])
    assert config_lib.shaping_differences(config, other) == ["model.width: 16 -> 32"]


def test_train_cli_rejects_bad_key_before_any_work(tmp_path):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganpaint.cli",
            "train",
            "--config",
            "configs/demo.yaml",
            "optim.lr=3",
            f"run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ganpaint: error: config key 'optim.lr': Key 'lr' not in 'OptimConfig'"
    ]
    assert not run_dir.exists()


def test_launcher_precision_and_cpu_trap_are_refused_in_one_line():
    from ganpaint.config import RunConfig
    from ganpaint.training.setup import check_launcher

    bf16 = RunConfig(mixed_precision="bf16")
    check_launcher(bf16, {"ACCELERATE_MIXED_PRECISION": "bf16"})  # agree
    check_launcher(bf16, {"ACCELERATE_MIXED_PRECISION": "no"})  # the launcher's default
    with pytest.raises(
        ConfigError, match="asks for mixed precision 'bf16'.*run.mixed_precision=bf16"
    ):
        check_launcher(RunConfig(mixed_precision="fp32"), {"ACCELERATE_MIXED_PRECISION": "bf16"})
    trap = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(ConfigError, match="--cpu --num_processes N` starts one process"):
        check_launcher(RunConfig(), trap)
    check_launcher(RunConfig(), {**trap, "WORLD_SIZE": "2"})  # a real multi-process launch


def test_loader_workers_are_capped_at_the_cores_of_a_process():
    import os

    from ganpaint.training.setup import fit_workers

    cores = len(os.sched_getaffinity(0))
    config = config_lib.load(None, [f"data.workers={cores + 4}"])
    fitted, note = fit_workers(config, local_processes=1)
    assert fitted.data.workers == cores - 1 and f"capped at {cores - 1}" in note
    same, none = fit_workers(config_lib.load(None, ["data.workers=0"]), local_processes=1)
    assert same.data.workers == 0 and none is None
