"""Micro-batches on the device for each training step: loader output, holes, latents.

The training loop and `ganpaint bench` both draw their batches here, so what is timed is what
trains.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ganpaint.config import TrainConfig, micro_batch_size
from ganpaint.data.masks import hole_generator, make_holes
from ganpaint.data.stream import train_loader
from ganpaint.models import Family
from ganpaint.training.schedule import Phase, phase_at
from ganpaint.training.steps import Batch, critic_steps, micro_batches_per_step


def device_batch(
    config: TrainConfig,
    family: Family,
    raw: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    generator: torch.Generator,
    device: torch.device,
) -> Batch:
    """A loader batch (uint8 [N,3,H,W], or with data.captions (images, token ids [N,T])) on the
    device as float in [0,1], with its holes (and latents, for generation families) drawn there
    from `generator`. The layout change happens on the uint8 tensor, a quarter of the bytes of the
    float one."""
    tokens = None
    if isinstance(raw, (tuple, list)):  # the DataLoader hands a pair over as a list
        raw, tokens = raw
        tokens = tokens.to(device, non_blocking=True)
    memory_format = torch.channels_last if config.run.channels_last else torch.contiguous_format
    raw = raw.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    images = raw.float().div_(255)
    count = images.shape[0]
    holes = make_holes(config.masks, count, config.data.image_px, generator, device)
    latent = None
    if not family.inpaints:
        latent = torch.randn(count, config.model.latent_dim, generator=generator, device=device)
    # hole_mask has one channel, so it is already channels_last-contiguous.
    return Batch(images, holes.hole_mask, holes.local_origin, latent, tokens)


class DataFeed:
    """Micro-batches on the device for each step, in an order that depends only on the step.

    One loader serves the whole run. Its stream is positioned in batches (ganpaint/data/stream.py),
    and the batches before a step are counted from the phases, so the first call (a fresh run, a
    resume, or `ganpaint bench` jumping to a phase) opens the loader exactly where that step's
    batches are, and consecutive steps read straight on.

    Corrupt samples the loader skipped are counted per batch handed out (a resume positions the
    loader after the batches the checkpoint's count already holds); `take_skipped` drains the
    count.
    """

    def __init__(
        self,
        config: TrainConfig,
        family: Family,
        rank: int,
        world: int,
        device: torch.device,
        run_phases: tuple[Phase, ...],
    ):
        self.config, self.family, self.run_phases = config, family, run_phases
        self.rank, self.world, self.device = rank, world, device
        self.local_batch = micro_batch_size(config, world)
        self.stream: Iterator[tuple[object, int]] | None = None
        self.next_step: int | None = None
        self.skipped = 0

    def _micro_batches(self, phase: Phase) -> int:
        return micro_batches_per_step(
            phase.kind, critic_steps(self.config.schedule), self.config.optim.grad_accum_steps
        )

    def batches_before(self, step: int) -> int:
        """Loader batches that steps 0 .. step-1 take (past the schedule: the last phase's rate)."""
        last = self.run_phases[-1]
        total = max(0, step - last.end_step) * self._micro_batches(last)
        for phase in self.run_phases:
            taken = min(step, phase.end_step) - phase.start_step
            total += max(0, taken) * self._micro_batches(phase)
        return total

    def _next(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        item, skipped = next(self.stream)
        self.skipped += skipped
        return item

    def take_skipped(self) -> int:
        """Corrupt samples or shards skipped for the batches handed out since the last call."""
        skipped, self.skipped = self.skipped, 0
        return skipped

    def close(self) -> None:
        """Stop the loader's workers now (also on an error, so no worker outlives the run)."""
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def batches(self, step: int) -> list[Batch]:
        if step != self.next_step:
            self.close()  # a loader left behind stops its workers
            self.stream = train_loader(
                self.config.data,
                self.local_batch,
                self.rank,
                self.world,
                self.config.run.seed,
                self.batches_before(step),
                counted=True,
            )
        self.next_step = step + 1
        generator = hole_generator(self.config.run.seed, self.rank, step, self.device)
        return [
            device_batch(self.config, self.family, self._next(), generator, self.device)
            for _ in range(self._micro_batches(phase_at(step, self.run_phases)))
        ]
