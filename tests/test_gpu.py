"""The training loop on a CUDA device: bf16 autocast, channels_last, torch.compile (skips without one)."""

import pytest
import torch

from ganpaint.training.loop import train

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


def _step_parts(config):
    """What the loop runs each step: state, settings, phases, and the device-batch builder."""
    from ganpaint.models import registry
    from ganpaint.training.schedule import phases
    from ganpaint.training.setup import build_state, make_backend, step_settings

    backend = make_backend(config.run)
    device = backend.accelerator.device
    state = build_state(config, backend)
    settings = step_settings(
        config, registry.get(config.model.family), torch.full((3,), 0.5), device
    )
    return state, settings, phases(settings.family, config.schedule), device


@pytest.mark.parametrize(
    "family, compile_step",
    [("glcic", False), ("glcic", True), ("context_encoder", False)]
    + [("wgan_unet", False), ("dcgan", False)],
    ids=["glcic-eager", "glcic-compiled", "context_encoder", "wgan_unet", "dcgan"],
)
def test_no_step_of_any_phase_waits_for_the_gpu(
    family, compile_step, synthetic_shards, make_config
):
    """Batch to the device, holes, the phase step, health and loss sums, with CUDA's sync debug
    mode raising on any host synchronisation (after two warm-up steps per phase)."""
    from test_train import FAMILY_OVERRIDES

    from ganpaint.data.masks import hole_generator
    from ganpaint.training.feed import device_batch
    from ganpaint.training.steps import STEP_FUNCTIONS, critic_steps, micro_batches_per_step

    overrides = {"model.family": family, **FAMILY_OVERRIDES[family], "run.mixed_precision": "bf16"}
    config = make_config(synthetic_shards, **overrides, **{"run.compile": compile_step})
    state, settings, run_phases, device = _step_parts(config)
    px, local_batch = config.data.image_px, config.data.batch_size
    raw = torch.randint(0, 256, (local_batch, 3, px, px), dtype=torch.uint8).pin_memory()
    sums = torch.zeros((), device=device)

    def step(index: int, phase) -> None:
        nonlocal sums
        generator = hole_generator(0, 0, index, device)
        count = micro_batches_per_step(phase.kind, critic_steps(config.schedule), 1)
        batches = [
            device_batch(config, settings.family, raw, generator, device) for _ in range(count)
        ]
        losses = STEP_FUNCTIONS[phase.kind](state, settings, batches)
        state.health.end_step(index + 1, config.run.max_bad_steps)
        sums = sums + sum(value for value in losses.values())

    for phase in run_phases:
        for index in range(phase.start_step, phase.start_step + 2):
            step(index, phase)  # warm-up: compilation (any recompile too), cuDNN autotuning
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for index in range(phase.start_step + 2, phase.start_step + 4):
                step(index, phase)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(sums) and state.health.read().skipped == 0
