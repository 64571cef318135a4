"""Run the real GLCIC step functions on one fixed global batch, under 1 or N processes.

N processes each take their B/N slice; one process takes the whole batch as N accumulated
micro-batches (each micro-batch then has its own BatchNorm statistics, exactly like one DDP rank),
so both make the same update up to floating-point summation order. Rank 0 writes the final
parameters to OUT (safetensors).
Usage: [accelerate launch ...] tests/scripts/equivalence.py OUT [dotted.key=value ...]
"""

import os
import sys

import torch
from safetensors.torch import save_file

from ganpaint import config as config_lib
from ganpaint.data.masks import hole_generator, make_holes
from ganpaint.models import registry
from ganpaint.models.layers import plain_module
from ganpaint.training.distributed import shutdown
from ganpaint.training.schedule import phases
from ganpaint.training.setup import build_state, make_backend, step_settings
from ganpaint.training.steps import STEP_FUNCTIONS, Batch

SLICES = 2  # the global batch is cut in this many slices: ranks, or accumulated micro-batches
TINY = [
    "data.image_px=32",
    "data.resize_min_px=32",
    "data.resize_max_px=32",
    "data.batch_size=8",
    "masks.local_px=16",
    "masks.hole_min_px=8",
    "masks.hole_max_px=12",
    "model.width=8",
    "model.disc_width=8",
    "model.fc_features=32",
    "schedule.completion_steps=2",
    "schedule.discriminator_steps=2",
    "schedule.total_steps=6",
]


def global_batch(config, steps: int) -> list[Batch]:
    """The same images and holes on every process, one global batch per step."""
    batches = []
    for step in range(steps):
        generator = hole_generator(config.run.seed, 0, step, "cpu")
        images = torch.rand(config.data.batch_size, 3, 32, 32, generator=generator)
        holes = make_holes(config.masks, config.data.batch_size, 32, generator, "cpu")
        batches.append(Batch(images, holes.hole_mask, holes.local_origin))
    return batches


def cut(batch: Batch, index: int, device) -> Batch:
    size = batch.images.shape[0] // SLICES
    part = slice(index * size, (index + 1) * size)
    return Batch(
        batch.images[part].to(device),
        batch.hole_mask[part].to(device),
        batch.local_origin[part].to(device),
    )


def main(out: str, overrides: list[str]) -> None:
    world = int(os.environ.get("WORLD_SIZE", 1))
    accumulation = SLICES // world
    config = config_lib.load(None, TINY + [f"optim.grad_accum_steps={accumulation}"] + overrides)
    backend = make_backend(config.run)
    accelerator = backend.accelerator
    state = build_state(config, backend)
    family = registry.get(config.model.family)
    settings = step_settings(config, family, torch.full((3,), 0.5), accelerator.device)
    run_phases = phases(settings.family, config.schedule)
    initial = parameters(state)
    for step, batch in enumerate(global_batch(config, config.schedule.total_steps)):
        kind = next(p.kind for p in run_phases if p.start_step <= step < p.end_step)
        if world == 1:
            micro_batches = [cut(batch, index, accelerator.device) for index in range(SLICES)]
        else:
            micro_batches = [cut(batch, accelerator.process_index, accelerator.device)]
        STEP_FUNCTIONS[kind](state, settings, micro_batches)
    if accelerator.is_main_process:
        final = parameters(state)
        save_file({**final, **{f"initial.{key}": value for key, value in initial.items()}}, out)


def parameters(state) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, net in state.nets().items():
        for key, value in plain_module(net).named_parameters():
            tensors[f"{name}.{key}"] = value.detach().cpu().clone().contiguous()
    return tensors


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
