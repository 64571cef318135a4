"""The one training loop: setup, resume, loop, tick, save, for every family and any process count.

Run it with `accelerate launch train.py --config configs/NAME.yaml [key=value ...]` (many
processes) or `ganpaint train ...` (one). Running the same command again resumes from the run
directory's newest checkpoint. SIGTERM or SIGUSR1 (SLURM's warning before the time limit) lets the
loop train on to its next log tick (at most log.every_steps steps, where all ranks agree to stop),
save a checkpoint there and return normally, so a requeued job carries on.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import torch
from torchvision.utils import save_image

from ganpaint import config as config_lib
from ganpaint.config import TrainConfig
from ganpaint.data.masks import hole_generator, make_holes
from ganpaint.data.stream import read_manifest, train_loader
from ganpaint.errors import UserError
from ganpaint.eval.baselines import versus_best
from ganpaint.export import save_export
from ganpaint.train import checkpoint
from ganpaint.train.log import RunLogger
from ganpaint.train.schedule import Phase, boundaries, phase_at, phases
from ganpaint.train.setup import build_trainables, make_accelerator
from ganpaint.train.steps import STEP_FUNCTIONS, Batch, Trainables, batches_per_step
from ganpaint.train.validation import load_validation, results_from_scalars, validate


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row."""


class StopSignals:
    """Remembers SIGTERM / SIGUSR1 so the loop can stop at a step boundary."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous = {}

    def __enter__(self) -> StopSignals:
        for number in (signal.SIGTERM, signal.SIGUSR1):
            self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame) -> None:
        self.received = number

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


class DataFeed:
    """Micro-batches on the device for each step, in an order that depends only on the step.

    The loader is rebuilt at every multiple of `checkpoint.every_steps` with that step as its seed,
    so resuming from any checkpoint replays the exact stream: from a checkpoint inside a segment,
    the batches of the segment's earlier steps are drawn and dropped.
    """

    def __init__(self, config: TrainConfig, parts: Trainables, run_phases: tuple[Phase, ...]):
        self.config, self.parts, self.run_phases = config, parts, run_phases
        accelerator = parts.accelerator
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.device = accelerator.device
        self.local_batch = config.data.batch_size // (self.world * config.optim.grad_accum_steps)
        self.segment = config.checkpoint.every_steps
        self.stream: Iterator[torch.Tensor] | None = None

    def _micro_batches(self, step: int) -> int:
        kind = phase_at(step, self.run_phases).kind
        groups = batches_per_step(kind, self.config.schedule.critic_steps)
        return groups * self.config.optim.grad_accum_steps

    def _open(self, segment_start: int) -> None:
        self.stream = iter(
            train_loader(
                self.config.data,
                self.local_batch,
                self.rank,
                self.world,
                self.config.run.seed,
                segment_start,
            )
        )

    def batches(self, step: int) -> list[Batch]:
        if self.stream is None or step % self.segment == 0:
            segment_start = step - step % self.segment
            self._open(segment_start)
            for earlier in range(segment_start, step):
                for _ in range(self._micro_batches(earlier)):
                    next(self.stream)
        generator = hole_generator(self.config.run.seed, self.rank, step, self.device)
        return [
            device_batch(self.config, next(self.stream), generator, self.device)
            for _ in range(self._micro_batches(step))
        ]


def device_batch(
    config: TrainConfig, raw: torch.Tensor, generator: torch.Generator, device: torch.device
) -> Batch:
    """A loader batch (uint8 [N,3,H,W]) on the device as float in [0,1], with its holes (and
    dcgan latents) drawn there from `generator`. The layout change happens on the uint8 tensor,
    a quarter of the bytes of the float one."""
    memory_format = torch.channels_last if config.run.channels_last else torch.contiguous_format
    raw = raw.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    images = raw.float().div_(255)
    count = images.shape[0]
    holes = make_holes(config.masks, count, config.data.image_px, generator, device)
    latent = None
    if config.model.family == "dcgan":
        latent = torch.randn(count, config.model.latent_dim, generator=generator, device=device)
    # hole_mask has one channel, so it is already channels_last-contiguous.
    return Batch(images, holes.hole_mask, holes.local_origin, latent)


def _fill_colour(config: TrainConfig, manifest: dict) -> torch.Tensor:
    if config.model.hole_fill == "zero":
        return torch.zeros(3)
    return torch.tensor(manifest["mean_rgb"], dtype=torch.float32)


def _resume(parts: Trainables, config: TrainConfig, run_dir: Path) -> int:
    path = checkpoint.latest(run_dir)
    if path is None:
        return 0
    state = checkpoint.read_state(path)
    checkpoint.check_compatible(state, config, path)
    checkpoint.load(parts, path)
    return int(state["step"])


def _agree(parts: Trainables, flag: bool) -> bool:
    """True on every rank if any rank raised the flag (signals may reach ranks at other steps)."""
    if parts.accelerator.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=parts.accelerator.device)
    return bool(parts.accelerator.reduce(value, reduction="sum").item() > 0)


def train(config: TrainConfig) -> Path:
    """Train `config` to schedule.total_steps (or until a stop signal). Returns the run dir."""
    # Setup: everything that can refuse the run does so before any training work.
    accelerator = make_accelerator(config.run)
    config_lib.validate(config, accelerator.num_processes)
    manifest = read_manifest(config.data.shards)
    run_dir = Path(config.run.dir)
    fill_rgb = _fill_colour(config, manifest)
    parts = build_trainables(config, accelerator, fill_rgb)
    run_phases = phases(config.model.family, config.schedule)
    phase_ends = boundaries(run_phases)
    total = config.schedule.total_steps

    # Resume: the newest checkpoint of this run directory, if any, in the right phase.
    step = _resume(parts, config, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        config_lib.save(config, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    logger = RunLogger(
        run_dir, config.log, accelerator.is_main_process, total, step, accelerator.device
    )
    validation = (
        load_validation(config, accelerator.device) if accelerator.is_main_process else None
    )
    feed = DataFeed(config, parts, run_phases)
    if step:
        logger.message(f"resumed {run_dir} at step {step} ({phase_at(step, run_phases).name})")
    plain_generator = accelerator.unwrap_model(parts.generator)

    def save(at_step: int) -> None:
        checkpoint.save(parts, run_dir, at_step, config, config.checkpoint.keep)

    def show(at_step: int) -> dict[str, float]:
        if not accelerator.is_main_process:
            return {}
        scalars, grid = validate(
            plain_generator, config.model.family, parts.fill_rgb, validation, parts.hole_fill
        )
        logger.scalars(at_step, scalars)
        logger.image_grid(at_step, "val/grid", grid)
        save_image(grid, run_dir / "samples" / f"step-{at_step:08d}.png")
        return scalars

    # Loop: one phase step per iteration; the phase is derived from the step, never stored.
    try:
        with StopSignals() as signals:
            while step < total:
                phase = phase_at(step, run_phases)
                losses = STEP_FUNCTIONS[phase.kind](parts, feed.batches(step))
                step += 1
                logger.record(losses, config.data.batch_size)
                if parts.health.in_a_row >= config.run.max_bad_steps:
                    raise TrainingDiverged(
                        f"{parts.health.in_a_row} non-finite '{parts.health.last_bad}' losses in a "
                        f"row in phase {phase.number} ({phase.name}) at step {step}: lower the "
                        "learning rate or check the data; the last good checkpoint is kept"
                    )

                # Tick: scalars every log.every_steps (the loop's one planned host sync, where
                # the ranks also agree on stop signals), images every log.image_every_steps
                # (the last step's are made once, by the finish below).
                stop = False
                if step % config.log.every_steps == 0 or step == total:
                    logger.tick(step, phase.name, {"health/skipped_steps": parts.health.skipped})
                    stop = _agree(parts, signals.received is not None)
                if step % config.log.image_every_steps == 0 and step < total:
                    show(step)

                # Save: every checkpoint.every_steps, at phase ends, at the end, or when signalled.
                if stop or step % config.checkpoint.every_steps == 0 or step in phase_ends:
                    save(step)
                if stop:
                    logger.message(
                        f"stop signal: checkpoint saved at step {step}; run the same "
                        "command again to continue"
                    )
                    return run_dir

        # Finish: inference export and the validation figures of the trained net.
        save(step)
        # On every rank: gathering the fp32 master weights is a collective under DeepSpeed.
        generator, discriminator = checkpoint.export_nets(parts, config)
        if accelerator.is_main_process:
            save_export(
                run_dir / "export", generator, discriminator, config, tuple(fill_rgb.tolist()), step
            )
            _report(run_dir, show(step), logger)
        return run_dir
    finally:
        logger.close()


def _report(run_dir: Path, scalars: dict[str, float], logger: RunLogger) -> None:
    lines = [
        f"run directory: {run_dir}",
        f"TensorBoard:   tensorboard --logdir {run_dir / 'tb'}",
        f"sample grid:   {max((run_dir / 'samples').glob('step-*.png'), default='-')}",
        f"export:        {run_dir / 'export'}",
    ]
    if scalars:
        lines.append(f"validation: {versus_best(results_from_scalars(scalars))}")
    for line in lines:
        logger.message(line)


def train_command(config: str, overrides: list[str]) -> int:
    """`ganpaint train`: the same loop, in this process."""
    train(config_lib.load(config, overrides))
    return 0
