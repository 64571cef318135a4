"""DeepSpeed ZeRO-1/2 in the training loop: config rules, safe checkpoint loading, real 2-process runs.

The launches are real: `accelerate launch --config_file launch/deepspeed_zero2.yaml` (the user's
command) or torchrun with run.deepspeed_config, 2 CPU processes over gloo, on real shards.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed)")

from deepspeed.runtime.fp16.loss_scaler import LossScaler  # noqa: E402
from deepspeed.runtime.zero.config import ZeroStageEnum  # noqa: E402
from deepspeed.utils.tensor_fragment import fragment_address  # noqa: E402
from test_distributed import ROOT, TINY, digests, launch, parameters_only  # noqa: E402

from ganpaint import config as config_lib  # noqa: E402
from ganpaint.config import ConfigError, RunConfig  # noqa: E402
from ganpaint.errors import UserError  # noqa: E402
from ganpaint.training import checkpoint, deepspeed, integrity  # noqa: E402
from ganpaint.training.backend import BatchGeometry  # noqa: E402
from ganpaint.training.setup import deepspeed_requested, make_backend  # noqa: E402

# Trains like tests/scripts/rank_digest.py (digests of every rank's parameters at each checkpoint
# save); NAN_CALLS="2,3" makes those calls of losses.masked_mse return NaN.
TRAIN_SCRIPT = """
import os, sys
sys.path.insert(0, {scripts!r})
import rank_digest  # noqa: F401
from ganpaint import config as config_lib, losses
from ganpaint.training.distributed import shutdown
from ganpaint.training.loop import train

nan_calls = {{int(n) for n in os.environ.get("NAN_CALLS", "").split(",") if n}}
real_mse, calls = losses.masked_mse, [0]

def mse_with_nans(prediction, target, hole_mask=None):
    calls[0] += 1
    value = real_mse(prediction, target, hole_mask)
    return value * float("nan") if calls[0] in nan_calls else value

losses.masked_mse = mse_with_nans
train(config_lib.load(sys.argv[1], sys.argv[2:]))
shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""

CENTER = ["masks.kind=center", "masks.hole_min_px=16", "masks.hole_max_px=16", "masks.local_px=16"]
ADAM = ["optim.generator=adam", "optim.discriminator=adam"]


def _environment(**extra: str) -> dict:
    # ACCELERATE_USE_CPU would make accelerate drop DeepSpeed; the loop picks gloo by itself.
    env = {key: value for key, value in os.environ.items() if key != "ACCELERATE_USE_CPU"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def accelerate_deepspeed(
    yaml: str, script: Path, *args: str, processes: int = 2, **env: str
) -> subprocess.CompletedProcess:
    """The user's command: accelerate launch --config_file launch/deepspeed_zeroN.yaml ..."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "launch" / yaml),
        "--num_processes",
        str(processes),
        "--main_process_port",
        "0",
        str(script),
        *args,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=_environment(**env)
    )


def torchrun(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        *args,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=ROOT, env=_environment(**env)
    )


@pytest.fixture
def train_script(tmp_path) -> Path:
    path = tmp_path / "train_and_digest.py"
    path.write_text(TRAIN_SCRIPT.format(scripts=str(ROOT / "tests" / "scripts")))
    return path


def write_json(path: Path, values: dict) -> str:
    path.write_text(json.dumps(values))
    return str(path)


def identical_ranks(run_dir: Path) -> list[dict]:
    rank0, rank1 = digests(run_dir, 0), digests(run_dir, 1)
    assert [row["world"] for row in rank0] == [2] * len(rank0)
    assert parameters_only(rank0) == parameters_only(rank1)
    return rank0


# --- fast: configuration, plugins, safe loading -------------------------------------------------


@pytest.mark.parametrize(
    ("values", "precision", "message"),
    [
        ({"zero_optimization": {"stage": 3}}, "bf16", "zero_optimization.stage 3"),
        ({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}, "bf16", "'optimizer'"),
        (
            {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}},
            "bf16",
            "zero_optimization.offload_optimizer",
        ),
        ({"zero_optimization": {"stage": 1}, "bf16": {"enabled": True}}, "fp32", "bf16.enabled"),
        (
            {"zero_optimization": {"stage": 2}, "bf16": {"check_grad_overflow": False}},
            "bf16",
            "non-finite guard",
        ),
        (
            {"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0},
            "bf16",
            "gradient_clipping",
        ),
        ({"train_batch_size": 8}, "bf16", "'zero_optimization' section"),
    ],
)
def test_deepspeed_json_the_loop_cannot_honour_is_refused(tmp_path, values, precision, message):
    path = write_json(tmp_path / "ds.json", values)
    with pytest.raises(ConfigError, match=message) as caught:
        deepspeed.make_plugin(RunConfig(deepspeed_config=path, mixed_precision=precision))
    assert str(caught.value).startswith(path) and "\n" not in str(caught.value)


def test_plugins_take_the_batch_geometry_from_the_training_config(tmp_path, monkeypatch):
    config = config_lib.load(
        TINY, ["data.batch_size=16", "optim.grad_accum_steps=2", "run.mixed_precision=bf16"]
    )
    # From a JSON that leaves the batch keys out: filled from the training config.
    path = write_json(tmp_path / "ds.json", {"zero_optimization": {"stage": 2}})
    plugin = deepspeed.make_plugin(RunConfig(deepspeed_config=path, mixed_precision="bf16"))
    batch = BatchGeometry(config.data.batch_size, config.optim.grad_accum_steps)
    deepspeed.set_batch_geometry(plugin, batch, 2, RunConfig(deepspeed_config=path))
    ds_config = plugin.deepspeed_config
    assert (
        ds_config["train_batch_size"],
        ds_config["gradient_accumulation_steps"],
        ds_config["train_micro_batch_size_per_gpu"],
    ) == (16, 2, 4)
    assert ds_config["gradient_clipping"] == 0.0
    assert ds_config["data_types"]["buffer_dtype"] == "bf16"
    # From what `accelerate launch --config_file launch/deepspeed_zero1.yaml` exports.
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "1")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1")
    assert deepspeed_requested(RunConfig())
    plugin = deepspeed.make_plugin(RunConfig(mixed_precision="bf16"))
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 1
    with pytest.raises(
        ConfigError, match="gradient_accumulation_steps is 1 but optim.grad_accum_steps makes it 2"
    ):
        deepspeed.set_batch_geometry(plugin, batch, 2, RunConfig(mixed_precision="bf16"))


def test_deepspeed_settings_refused_before_any_process_group(tmp_path, monkeypatch):
    path = write_json(tmp_path / "ds.json", {"zero_optimization": {"stage": 2}})
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert not deepspeed_requested(RunConfig())
    with pytest.raises(ConfigError, match="needs a launcher"):
        make_backend(RunConfig(deepspeed_config=path, mixed_precision="bf16"))
    with pytest.raises(ConfigError, match="fp16 is not supported"):
        deepspeed.make_accelerator(RunConfig(deepspeed_config=path, mixed_precision="fp16"), False)
    with pytest.raises(ConfigError, match="run.cpu"):
        deepspeed.make_accelerator(RunConfig(deepspeed_config=path, cpu=True), True)


class Payload:
    """Unpickling this with full pickle runs os.mkdir(path): what weights_only must prevent."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_checkpoint_engine_loads_deepspeed_classes_and_refuses_other_code(tmp_path):
    state = {
        "module": {"weight": torch.arange(4.0)},
        "scaler": LossScaler(1.0),
        "stage": ZeroStageEnum.gradients,
        "address": fragment_address(numel=4, start=8),
    }
    torch.save(state, tmp_path / "good.pt")
    loaded = deepspeed.SafeCheckpointEngine(None).load(str(tmp_path / "good.pt"))
    assert torch.equal(loaded["module"]["weight"], torch.arange(4.0))
    assert loaded["scaler"].cur_scale == 1.0 and loaded["stage"] == ZeroStageEnum.gradients
    assert loaded["address"] == fragment_address(numel=4, start=8)
    marker = tmp_path / "code_ran"
    torch.save({**state, "payload": Payload(str(marker))}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"bad.pt: refused: .*GLOBAL posix.mkdir"):
        deepspeed.SafeCheckpointEngine(None).load(str(tmp_path / "bad.pt"))
    assert not marker.exists()


def test_a_checkpoint_resumes_only_under_the_engine_that_wrote_it(tmp_path):
    (tmp_path / "state.json").write_text(
        json.dumps({"step": 3, "config": {}, "deepspeed": {"processes": 2, "zero_stage": 2}})
    )
    ddp = SimpleNamespace(backend=SimpleNamespace(name="ddp", label="DDP"))
    deepspeed_run = SimpleNamespace(backend=SimpleNamespace(name="deepspeed", label="DeepSpeed"))
    with pytest.raises(UserError, match="written by a DeepSpeed run .* with DDP"):
        checkpoint.load(ddp, tmp_path)
    (tmp_path / "state.json").write_text(json.dumps({"step": 3, "config": {}}))
    with pytest.raises(UserError, match="written by a DDP run .* with DeepSpeed"):
        checkpoint.load(deepspeed_run, tmp_path)
    # today's record names the backend itself
    record = {
        "step": 3,
        "config": {},
        "backend": {"name": "deepspeed", "label": "DeepSpeed", "processes": 2},
    }
    (tmp_path / "state.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="written by a DeepSpeed run"):
        checkpoint.load(ddp, tmp_path)


# --- slow: real 2-process launches -----------------------------------------------------------


def run_glcic(yaml: str, script: Path, shards: Path, run_dir: Path, total_steps: int, **env: str):
    return accelerate_deepspeed(
        yaml,
        script,
        str(TINY),
        f"data.shards={shards}",
        f"run.dir={run_dir}",
        "run.mixed_precision=bf16",
        f"schedule.total_steps={total_steps}",
        "checkpoint.every_steps=3",
        **env,
    )


@pytest.mark.slow
def test_zero2_launch_trains_glcic_checkpoints_resumes_and_exports(
    synthetic_shards, tmp_path, train_script
):
    run_dir = tmp_path / "run"
    first = run_glcic("deepspeed_zero2.yaml", train_script, synthetic_shards, run_dir, 6)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = identical_ranks(run_dir)
    assert [row["step"] for row in rows] == [2, 3, 4, 6, 6]  # phase ends, every 3, the end
    saved = checkpoint.latest(run_dir)
    state = json.loads((saved / "state.json").read_text())
    assert state["step"] == 6
    assert state["backend"] == {
        "name": "deepspeed",
        "label": "DeepSpeed",
        "processes": 2,
        "zero_stage": 2,
    }
    for net in ("generator", "discriminator"):
        files = sorted(path.name for path in (saved / net).iterdir())
        assert files == [
            "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "mp_rank_00_model_states.pt",
        ]
        # The export holds the fp32 masters, of which the engine's bf16 weights are the rounding.
        exported = load_file(str(run_dir / "export" / f"{net}.safetensors"))
        module = deepspeed.SafeCheckpointEngine(None).load(
            str(saved / net / "mp_rank_00_model_states.pt")
        )["module"]
        assert exported.keys() == module.keys()
        for key, value in module.items():
            if value.is_floating_point():
                assert exported[key].dtype == torch.float32
                assert torch.equal(exported[key].to(value.dtype), value), key

    # A tampered checkpoint is refused on resume, and its payload never runs: with its integrity
    # record rewritten to match, only the weights_only loader stands in the way.
    model_file = saved / "generator" / "mp_rank_00_model_states.pt"
    shutil.copy(model_file, tmp_path / "original.pt")
    marker = tmp_path / "code_ran"
    tampered = deepspeed.SafeCheckpointEngine(None).load(str(model_file))
    torch.save({**tampered, "payload": Payload(str(marker))}, model_file)
    integrity.write_record(saved)
    refused = run_glcic("deepspeed_zero2.yaml", train_script, synthetic_shards, run_dir, 8)
    assert refused.returncode != 0 and "refused" in refused.stderr and not marker.exists()
    shutil.copy(tmp_path / "original.pt", model_file)
    integrity.write_record(saved)

    # The same command with a later end resumes from step 6 on both ranks.
    second = run_glcic("deepspeed_zero2.yaml", train_script, synthetic_shards, run_dir, 8)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resumed {run_dir} at step 6" in second.stdout
    resumed = identical_ranks(run_dir)[len(rows) :]
    assert [row["step"] for row in resumed] == [8, 8]
    # ... and ends where an uninterrupted run ends (fp32 masters and optimiser state restored).
    straight = run_glcic(
        "deepspeed_zero2.yaml", train_script, synthetic_shards, tmp_path / "straight", 8
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert parameters_only(digests(tmp_path / "straight", 0)[-1:]) == parameters_only(resumed[-1:])


@pytest.mark.slow
def test_a_partition_damaged_on_one_rank_makes_both_ranks_fall_back(
    synthetic_shards, tmp_path, train_script
):
    """A checkpoint without a record (as older ganpaint wrote) whose rank-1 optimiser partition
    is torn: only rank 1 fails to load it, and both ranks resume from the one before."""
    run_dir = tmp_path / "run"
    first = run_glcic("deepspeed_zero2.yaml", train_script, synthetic_shards, run_dir, 6)
    assert first.returncode == 0, first.stderr[-3000:]
    newest = checkpoint.latest(run_dir)
    for record in newest.parent.glob("*/complete.json"):
        record.unlink()
    partition = newest / "generator" / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"
    partition.write_bytes(partition.read_bytes()[:1000])
    second = run_glcic("deepspeed_zero2.yaml", train_script, synthetic_shards, run_dir, 8)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "passed over step-00000006 (failed to load on another process" in second.stdout
    assert f"resumed {run_dir} at step 4" in second.stdout
    identical_ranks(run_dir)


@pytest.mark.slow
def test_zero1_fp32_trains_like_ddp(synthetic_shards, tmp_path, train_script):
    """Same config, same data: the ZeRO-1 engines (torchrun + run.deepspeed_config, gradient
    accumulation over 2 micro-batches) end where the DDP nets end, up to reduction order."""
    # loss.reconstruction_weight=100 makes gradient norms > 1, where any clipping would show.
    common = [
        str(TINY),
        f"data.shards={synthetic_shards}",
        "run.mixed_precision=fp32",
        "run.channels_last=false",
        "data.batch_size=8",
        "optim.grad_accum_steps=2",
        "schedule.completion_steps=1",
        "schedule.discriminator_steps=1",
        "schedule.total_steps=3",
        "loss.reconstruction_weight=100",
    ]
    ds_json = write_json(tmp_path / "zero1.json", {"zero_optimization": {"stage": 1}})
    zero = torchrun(
        train_script, *common, f"run.dir={tmp_path / 'zero1'}", f"run.deepspeed_config={ds_json}"
    )
    assert zero.returncode == 0, zero.stderr[-3000:]
    ddp = launch(train_script, *common, f"run.dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    for net in ("generator", "discriminator"):
        expected = load_file(str(tmp_path / "ddp" / "export" / f"{net}.safetensors"))
        actual = load_file(str(tmp_path / "zero1" / "export" / f"{net}.safetensors"))
        earlier = load_file(
            str(checkpoint.saved_steps(tmp_path / "ddp")[0][1] / f"{net}.safetensors")
        )
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6, msg=key)
        assert any(not torch.equal(expected[key], earlier[key]) for key in expected)


FAMILIES = {
    # Critic clipping with 2 critic steps per G step; G losses 2 and 3 are NaN.
    "wgan_unet": (
        "zero1",
        [
            "model.family=wgan_unet",
            *CENTER,
            *ADAM,
            "schedule.critic_steps=2",
            "optim.generator_lr=2e-3",
            "optim.discriminator_lr=2e-3",
        ],
        "2,3",
    ),
    "dcgan": (
        "zero2",
        [
            "model.family=dcgan",
            "data.image_px=64",
            "data.resize_min_px=64",
            "data.resize_max_px=64",
            *ADAM,
        ],
        "",
    ),
    "context_encoder": (
        "zero2",
        [
            "model.family=context_encoder",
            *CENTER,
            *ADAM,
            "data.batch_size=8",
            "optim.grad_accum_steps=2",
        ],
        "",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_other_families_train_under_deepspeed(family, synthetic_shards, tmp_path, train_script):
    stage, overrides, nan_calls = FAMILIES[family]
    ds_json = write_json(tmp_path / "ds.json", {"zero_optimization": {"stage": int(stage[-1])}})
    run_dir = tmp_path / "run"
    # tiny.yaml is a GLCIC: the other families take its shared keys, not GLCIC's own
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY.read_text().replace(", fc_features: 32}", "}"))
    result = torchrun(
        train_script,
        str(tiny),
        f"data.shards={synthetic_shards}",
        f"run.dir={run_dir}",
        f"run.deepspeed_config={ds_json}",
        "run.mixed_precision=bf16",
        "schedule.total_steps=4",
        "checkpoint.every_steps=2",
        *overrides,
        NAN_CALLS=nan_calls,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [row["step"] for row in identical_ranks(run_dir)] == [2, 4, 4]
    stats = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    expected_skips = [0, 1, 2, 2] if nan_calls else [0, 0, 0, 0]
    assert [row["health/skipped_steps"] for row in stats] == expected_skips
    exported = {
        net: load_file(str(run_dir / "export" / f"{net}.safetensors"))
        for net in ("generator", "discriminator")
    }
    for weights in exported.values():
        assert all(torch.isfinite(value.float()).all() for value in weights.values())
    if family == "wgan_unet":
        # The fp32 masters were clipped too, not only the bf16 copies the engine overwrites.
        critic = [
            value
            for key, value in exported["discriminator"].items()
            if "running" not in key and value.is_floating_point()
        ]
        assert max(value.abs().max() for value in critic) <= torch.tensor(0.03)


@pytest.mark.gpu
def test_zero2_launch_on_gpus(synthetic_shards, tmp_path, train_script):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    processes = min(2, torch.cuda.device_count())
    run_dir = tmp_path / "run"
    result = accelerate_deepspeed(
        "deepspeed_zero2.yaml",
        train_script,
        str(TINY),
        f"data.shards={synthetic_shards}",
        f"run.dir={run_dir}",
        "run.mixed_precision=bf16",
        "schedule.total_steps=6",
        processes=processes,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [row for rank in range(processes) for row in digests(run_dir, rank)]
    assert {row["world"] for row in rows} == {processes}
    assert len({row["generator_parameters"] for row in rows if row["step"] == 6}) == 1
    assert (run_dir / "export" / "generator.safetensors").is_file()
