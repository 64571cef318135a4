"""The one training loop: setup, resume, loop, tick, save, for every family and any process count.

Run it with `accelerate launch train.py --config configs/NAME.yaml [key=value ...]` (many
processes) or `ganpaint train ...` (one). Running the same command again resumes from the run
directory's newest checkpoint. SIGTERM or SIGUSR1 (SLURM's warning before the time limit) lets the
loop train on to its next log tick (at most log.every_steps steps, where all ranks agree to stop),
save a checkpoint there and return normally, so a requeued job carries on.
"""

from __future__ import annotations

import signal
from pathlib import Path

import torch
from accelerate import Accelerator
from torchvision.utils import save_image

from ganpaint import config as config_lib
from ganpaint.config import TrainConfig
from ganpaint.data.stream import read_manifest
from ganpaint.errors import UserError
from ganpaint.export import save_export
from ganpaint.models.layers import plain_module
from ganpaint.train import checkpoint
from ganpaint.train.backend import TrainState
from ganpaint.train.feed import DataFeed
from ganpaint.train.guard import HealthReading
from ganpaint.train.log import RunLogger
from ganpaint.train.schedule import Phase, boundaries, phase_at, phases
from ganpaint.train.setup import build_state, compiles, make_backend, step_settings
from ganpaint.train.steps import STEP_FUNCTIONS
from ganpaint.train.validation import load_validation_set, run_validation


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


def _fill_colour(config: TrainConfig, manifest: dict) -> torch.Tensor:
    if config.model.hole_fill == "zero":
        return torch.zeros(3)
    return torch.tensor(manifest["mean_rgb"], dtype=torch.float32)


def _resume(state: TrainState, config: TrainConfig, run_dir: Path) -> int:
    path = checkpoint.latest(run_dir)
    if path is None:
        return 0
    saved = checkpoint.read_state(path)
    checkpoint.check_compatible(saved, config, path)
    checkpoint.load(state, path)
    return int(saved["step"])


def _agree(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank if any rank raised the flag (signals may reach ranks at other steps)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def _checked(health: HealthReading, run_phases: tuple[Phase, ...]) -> HealthReading:
    """The reading, or TrainingDiverged if run.max_bad_steps non-finite updates came in a row."""
    if health.storm is None:
        return health
    step, count, net = health.storm
    phase = phase_at(step - 1, run_phases)
    raise TrainingDiverged(
        f"{count} non-finite '{net}' losses in a row in phase {phase.number} ({phase.name}) at "
        f"step {step}: lower the learning rate or check the data; the last good checkpoint is kept"
    )


def train(config: TrainConfig) -> Path:
    """Train `config` to schedule.total_steps (or until a stop signal). Returns the run dir."""
    # Setup: everything that can refuse the run does so before any training work.
    backend = make_backend(config.run)
    accelerator = backend.accelerator
    config_lib.validate(config, accelerator.num_processes)
    manifest = read_manifest(config.data.shards)
    run_dir = Path(config.run.dir)
    fill_rgb = _fill_colour(config, manifest)
    state = build_state(config, backend)
    settings = step_settings(config, fill_rgb, accelerator.device)
    run_phases = phases(settings.family, config.schedule)
    phase_ends = boundaries(run_phases)
    total = config.schedule.total_steps

    # Resume: the newest checkpoint of this run directory, if any, in the right phase.
    step = _resume(state, config, run_dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        config_lib.save(config, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    logger = RunLogger(
        run_dir, config.log, accelerator.is_main_process, total, step, accelerator.device
    )
    validation = (
        load_validation_set(config, accelerator.device) if accelerator.is_main_process else None
    )
    feed = DataFeed(
        config, accelerator.process_index, accelerator.num_processes, accelerator.device, run_phases
    )
    if step:
        logger.message(f"resumed {run_dir} at step {step} ({phase_at(step, run_phases).name})")
    if config.run.compile and not compiles(config, backend):
        logger.message(
            f"run.compile applies on CUDA under DDP: this {backend.label} run on "
            f"{accelerator.device.type} trains eagerly"
        )
    plain_generator = plain_module(state.generator)

    def save(at_step: int) -> None:
        _checked(state.health.read(), run_phases)  # a diverged run keeps its last good checkpoint
        checkpoint.save(state, run_dir, at_step, config, config.checkpoint.keep)

    def show(at_step: int) -> dict[str, float]:
        if not accelerator.is_main_process:
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
                step += 1
                state.health.end_step(step, config.run.max_bad_steps)
                logger.record(losses, config.data.batch_size)

                # Tick: scalars every log.every_steps (the loop's one planned host sync, where
                # the ranks also agree on stop signals and a run of non-finite losses stops the
                # run), images every log.image_every_steps (the last step's are made once, by
                # the finish below).
                stop = False
                if step % config.log.every_steps == 0 or step == total:
                    health = _checked(state.health.read(), run_phases)
                    logger.tick(step, phase.name, {"health/skipped_steps": health.skipped})
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
