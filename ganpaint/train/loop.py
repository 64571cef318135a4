"""The one training loop: setup, resume, loop, tick, save, for every family and any process count.

Run it with `accelerate launch train.py --config configs/NAME.yaml [key=value ...]` (many
processes) or `ganpaint train ...` (one). Running the same command again resumes from the run
directory's newest checkpoint. SIGTERM or SIGUSR1 (SLURM's warning before the time limit) lets the
loop train on to its next log tick (at most log.every_steps steps, where all ranks agree to stop),
save a checkpoint there and return normally, so a requeued job carries on.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torchvision.utils import save_image

from ganpaint import config as config_lib
from ganpaint.config import TrainConfig
from ganpaint.data.manifest import check_split, read_manifest
from ganpaint.errors import UserError
from ganpaint.export import save_export
from ganpaint.models.layers import plain_module
from ganpaint.train import checkpoint
from ganpaint.train.distributed import sum_over_ranks
from ganpaint.train.feed import DataFeed
from ganpaint.train.log import RunLogger
from ganpaint.train.schedule import boundaries, phase_at, phases
from ganpaint.train.setup import build_state, make_backend, step_settings
from ganpaint.train.steps import STEP_FUNCTIONS
from ganpaint.train.validation import load_validation_set, run_validation


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row."""


class StopSignals:
    """Remembers SIGTERM / SIGUSR1 / SIGINT so the loop can stop at a step boundary. A second
    Ctrl-C stops at once (KeyboardInterrupt; saves are atomic, so no checkpoint is harmed); one
    within SECOND_PRESS_S of the first is the same press relayed (`accelerate launch` forwards it
    to every process the terminal already signalled)."""

    SECOND_PRESS_S = 1.0

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous = {}
        self.interrupted_at: float | None = None

    def __enter__(self) -> StopSignals:
        for number in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame) -> None:
        if number == signal.SIGINT:
            now = time.monotonic()
            if self.interrupted_at is None:
                self.interrupted_at = now
            elif now - self.interrupted_at >= self.SECOND_PRESS_S:
                signal.default_int_handler(number, frame)  # raises KeyboardInterrupt
        self.received = number

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def _fill_colour(config: TrainConfig, manifest: dict) -> torch.Tensor:
    if config.model.hole_fill == "zero":
        return torch.zeros(3)
    return torch.tensor(manifest["mean_rgb"], dtype=torch.float32)


def _check_run_dir(run_dir: Path) -> None:
    for path in (run_dir, checkpoint.checkpoint_root(run_dir)):
        if path.exists() and not path.is_dir():
            raise UserError(f"run.dir: {path} exists and is not a directory")


def _agree(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank if any rank raised the flag (signals may reach ranks at other steps)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def train(config: TrainConfig) -> Path:
    """Train `config` to schedule.total_steps (or until a stop signal). Returns the run dir."""
    # Setup: everything that can refuse the run does so before any training work.
    backend = make_backend(config.run)
    accelerator = backend.accelerator
    config_lib.validate(config, accelerator.num_processes)
    manifest = read_manifest(config.data.shards)
    run_dir = Path(config.run.dir)
    _check_run_dir(run_dir)
    if config.data.val_images:
        check_split(manifest, config.data.shards, config.data.val_split)
    fill_rgb = _fill_colour(config, manifest)
    state = build_state(config, backend)
    settings = step_settings(config, fill_rgb, accelerator.device)
    run_phases = phases(settings.family, config.schedule)
    phase_ends = boundaries(run_phases)
    total = config.schedule.total_steps

    validation = None  # data.val_images 0: no validation grids or figures
    if accelerator.is_main_process and config.data.val_images:
        validation = load_validation_set(config, accelerator.device)

    # Resume: the newest usable checkpoint of this run directory, if any, in the right phase.
    step, resume_notes = checkpoint.resume(state, config, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        config_lib.save(config, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    logger = RunLogger(
        run_dir, config.log, accelerator.is_main_process, total, step, accelerator.device
    )
    feed = DataFeed(
        config, accelerator.process_index, accelerator.num_processes, accelerator.device, run_phases
    )
    for note in resume_notes:
        logger.message(note)
    if step:
        logger.message(f"resumed {run_dir} at step {step} ({phase_at(step, run_phases).name})")
    plain_generator = plain_module(state.generator)

    def save(at_step: int) -> None:
        checkpoint.save(state, run_dir, at_step, config, config.checkpoint.keep)

    def show(at_step: int) -> dict[str, float]:
        if validation is None:
            return {}
        scalars, grid = run_validation(plain_generator, settings, validation)
        logger.scalars(at_step, scalars)
        logger.image_grid(at_step, "val/grid", grid)
        save_image(grid, run_dir / "samples" / f"step-{at_step:08d}.png")
        return scalars

    # Loop: one phase step per iteration; the phase is derived from the step, never stored.
    try:
        with StopSignals() as signals:
            while step < total:
                phase = phase_at(step, run_phases)
                losses = STEP_FUNCTIONS[phase.kind](state, settings, feed.batches(step))
                state.health.corrupt_samples += feed.take_skipped()
                step += 1
                logger.record(losses, config.data.batch_size)
                if state.health.in_a_row >= config.run.max_bad_steps:
                    raise TrainingDiverged(
                        f"{state.health.in_a_row} non-finite '{state.health.last_bad}' losses in a "
                        f"row in phase {phase.number} ({phase.name}) at step {step}: lower the "
                        "learning rate or check the data; the last good checkpoint is kept"
                    )

                # Tick: scalars every log.every_steps (the loop's one planned host sync, where
                # the ranks also agree on stop signals), images every log.image_every_steps
                # (the last step's are made once, by the finish below).
                stop = False
                if step % config.log.every_steps == 0 or step == total:
                    health = {
                        "health/skipped_steps": state.health.skipped,
                        "health/corrupt_samples": sum_over_ranks(
                            accelerator, state.health.corrupt_samples
                        ),
                    }
                    logger.tick(step, phase.name, health)
                    stop = _agree(accelerator, signals.received is not None)
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
        nets = backend.export_nets(state, config)
        if accelerator.is_main_process:
            save_export(
                run_dir / "export",
                nets.generator,
                nets.discriminator,
                config,
                tuple(fill_rgb.tolist()),
                step,
            )
            _report(run_dir, show(step), logger)
        return run_dir
    finally:
        feed.close()
        logger.close()


def _report(run_dir: Path, scalars: dict[str, float], logger: RunLogger) -> None:
    lines = [
        f"run directory: {run_dir}",
        f"TensorBoard:   tensorboard --logdir {run_dir / 'tb'}",
        f"sample grid:   {max((run_dir / 'samples').glob('step-*.png'), default='-')}",
        f"export:        {run_dir / 'export'}",
    ]
    if scalars:
        model, baseline = scalars["val/hole_psnr"], scalars["val/hole_psnr_mean_fill"]
        lines.append(
            f"validation hole PSNR: {model:.2f} dB trained vs {baseline:.2f} dB mean fill "
            f"({model - baseline:+.2f} dB)"
        )
    for line in lines:
        logger.message(line)


def train_command(config: str, overrides: list[str]) -> int:
    """`ganpaint train`: the same loop, in this process."""
    train(config_lib.load(config, overrides))
    return 0
