"""The training loop on a CUDA device: bf16 autocast, channels_last, torch.compile (skips without one)."""

import pytest
import torch

from ganpaint.train.loop import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("compile_step", [False, True], ids=["eager", "compiled"])
def test_glcic_trains_through_its_phases_on_the_gpu(compile_step, synthetic_shards, make_config):
    config = make_config(
        synthetic_shards,
        **{
            "run.mixed_precision": "bf16",
            "run.compile": compile_step,
            "schedule.completion_steps": 3,
            "schedule.discriminator_steps": 2,
            "schedule.total_steps": 8,
            "log.every_steps": 1,
            "data.workers": 1,
        },
    )
    run_dir = train(config)
    rows = (run_dir / "stats.jsonl").read_text().splitlines()
    assert len(rows) == 8 and '"health/skipped_steps": 0' in rows[-1]
    assert '"perf/gpu_mem_gib"' in rows[-1]
    assert (run_dir / "export" / "generator.safetensors").is_file()
