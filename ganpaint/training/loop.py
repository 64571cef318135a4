"""The one training loop: setup, resume, loop, tick, save, for every family and any process count.

Run it with `accelerate launch train.py --config configs/NAME.yaml [key=value ...]` (many
processes) or `ganpaint train ...` (one). Running the same command again resumes from the run
directory's newest checkpoint. SIGTERM, SIGUSR1 (SLURM's warning before the time limit) or Ctrl-C
lets the loop train on to its next log tick (at most log.every_steps steps, where all ranks agree to stop),
save a checkpoint there and return normally, so a requeued job carries on.

One trainer holds the run directory at a time (ganpaint/training/lock.py). Weights or optimiser state
gone inf/NaN are never saved: the save that finds them rolls the run back to its newest checkpoint
instead (ganpaint/training/rollback.py), a bounded number of times.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torchvision.utils import save_image

from ganpaint import config as config_lib
from ganpaint.baselines import versus_best
from ganpaint.config import TrainConfig
from ganpaint.data.captions import training_tokenizer
from ganpaint.data.manifest import check_split, read_manifest
from ganpaint.data.remote import configure as configure_remote
from ganpaint.errors import UserError, WeightsNotFinite
from ganpaint.files import atomic_path, reporting_full_disk
from ganpaint.infer.export import save_export
from ganpaint.models import build_nets, registry
from ganpaint.models.layers import plain_module
from ganpaint.training import checkpoint
from ganpaint.training.backend import TrainState
from ganpaint.training.distributed import shutdown, sum_over_ranks
from ganpaint.training.feed import DataFeed
from ganpaint.training.guard import HealthReading
from ganpaint.training.lock import RunLock, acquire_on_rank_zero
from ganpaint.training.log import RunLogger
from ganpaint.training.rollback import Rollbacks
from ganpaint.training.schedule import Phase, boundaries, phase_at, phases
from ganpaint.training.setup import (
    build_state,
    compiles,
    fit_workers,
    make_backend,
    set_learning_rates,
    step_settings,
)
from ganpaint.training.steps import STEP_FUNCTIONS
from ganpaint.training.stop import write_marker
from ganpaint.training.validation import (
    ValidationSet,
    load_validation_set,
    run_validation,
    versus_baselines,
)


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row."""


class StopSignals:
    """Remembers SIGTERM / SIGUSR1 / SIGINT so the loop can stop at a step boundary.

    A second Ctrl-C stops at once (KeyboardInterrupt; saves are atomic, so no checkpoint is
    harmed); one within SECOND_PRESS_S of the first is the same press relayed (`accelerate launch`
    forwards it to every process the terminal already signalled).

    A launcher may start this process with the signals blocked (the SLURM node supervisor in
    ganpaint/launch_plan.py does, because SLURM signals every process of a job step): entering
    unblocks them, so one that arrived during start-up is delivered here, and leaving restores the
    mask (and ignores the signals it held back), so one that arrives after the loop cannot kill a
    process that has finished its work.
    """

    NUMBERS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    SECOND_PRESS_S = 1.0

    def __init__(self) -> None:
        self.received: int | None = None
        self.seen: set[int] = set()
        self.previous = {}
        self.previous_mask: set[int] = set()
        self.interrupted_at: float | None = None

    def __enter__(self) -> StopSignals:
        for number in self.NUMBERS:
            self.previous[number] = signal.signal(number, self._handle)
        self.previous_mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, self.NUMBERS)
        return self

    def _handle(self, number: int, frame) -> None:
        if number == signal.SIGINT:
            now = time.monotonic()
            if self.interrupted_at is None:
                self.interrupted_at = now
            elif now - self.interrupted_at >= self.SECOND_PRESS_S:
                signal.default_int_handler(number, frame)  # raises KeyboardInterrupt
        self.received = number
        self.seen.add(number)

    def __exit__(self, *exc) -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, self.previous_mask)
        for number, handler in self.previous.items():
            # A signal the launcher held back stays harmless after the loop as well: threads
            # started meanwhile do not block it, and its default action would end the process
            # in the middle of its exit barrier.
            held_back = number in self.previous_mask
            signal.signal(number, signal.SIG_IGN if held_back else handler)


def _check_run_dir(run_dir: Path) -> None:
    for path in (run_dir, checkpoint.checkpoint_root(run_dir), run_dir / "export"):
        if path.exists() and not path.is_dir():
            raise UserError(f"run.dir: {path} exists and is not a directory")


def _settings_changes(config: TrainConfig, run_dir: Path) -> dict:
    """What this command changes in the run's saved config.yaml: refused (one line) for the model
    and the data, returned for the rest (recorded by the caller)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return {}
    saved = config_lib.load(saved_path, [f"run.dir={config.run.dir}"], saved=True)
    changes = config_lib.differences(saved, config)
    fixed = [
        f"{key}: {old!r} -> {new!r}"
        for key, (old, new) in changes.items()
        if config_lib.fixed_for_a_run(key)
    ]
    if fixed:
        raise UserError(
            f"{saved_path} trains another model or on other data ({'; '.join(fixed)}): "
            f"continue the run with `--resume {run_dir}` (its saved config) or use a new run.dir"
        )
    return changes


def _record_changes(run_dir: Path, step: int, changes: dict, logger: RunLogger) -> None:
    if not changes:
        return
    text = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changes.items())
    logger.message(f"continuing {run_dir} at step {step} with changed settings: {text}")
    with (run_dir / "config_changes.jsonl").open("a") as record:
        record.write(json.dumps({"step": step, "changes": changes}) + "\n")


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


def train(config: TrainConfig, resume_from: str | Path | None = None) -> Path:
    """Train `config` to schedule.total_steps (or until a stop signal). Returns the run dir.

    Resumes from the run directory's newest checkpoint, or from `resume_from` (a checkpoint
    directory of this run) when given. The run directory is locked for the run's life
    (ganpaint/training/lock.py): a second trainer of the same directory is refused in one line."""
    held: list[RunLock] = []
    try:
        return _train(config, resume_from, held)
    finally:
        for run_lock in held:  # the kernel would release it with the process; a caller lives on
            run_lock.release()


def _train(config: TrainConfig, resume_from: str | Path | None, held: list[RunLock]) -> Path:
    """`train`, appending the run directory's lock to `held` once it is taken."""
    # Setup: everything that can refuse the run does so before any training work.
    others = [name for name in config.log.trackers if name != "tensorboard"]
    backend = make_backend(config.run, others)
    accelerator = backend.accelerator
    config_lib.validate(config, accelerator.num_processes)
    family = registry.get(config.model.family)  # resolved once; everything below receives it
    run_dir = Path(config.run.dir)
    _check_run_dir(run_dir)
    changes = _settings_changes(config, run_dir)
    configure_remote(config.data)  # timeouts, cache and bad-shard policy of remote shard reads
    manifest = read_manifest(config.data.shards)
    mean_rgb = torch.tensor(manifest["mean_rgb"], dtype=torch.float32)  # the training images'
    if config.data.val_images:
        val_shards = config.data.val_shards or config.data.shards
        val_manifest = read_manifest(val_shards) if config.data.val_shards else manifest
        check_split(val_manifest, val_shards, config.data.val_split)
    tokenizer = None  # caption families: the shards' tokenizer, exported with the generator
    if family.captions:
        tokenizer = training_tokenizer(config.data.shards, config.model.vocabulary_size)
    fill_rgb = torch.zeros(3) if config.model.hole_fill == "zero" else mean_rgb
    state = build_state(config, backend)
    settings = step_settings(config, family, fill_rgb, accelerator.device)
    run_phases = phases(family, config.schedule)
    phase_ends = boundaries(run_phases)
    total = config.schedule.total_steps

    validation = None  # data.val_images 0: no validation grids or figures
    if accelerator.is_main_process and config.data.val_images:
        validation = load_validation_set(config, family, accelerator.device, mean_rgb)

    # One trainer per run directory, from before anything writes into it (the resume may set
    # damaged checkpoints aside) to the end; a run refused above leaves no directory behind.
    run_lock, lock_note = acquire_on_rank_zero(accelerator, run_dir)
    held.append(run_lock)

    # Resume: the newest usable checkpoint of this run directory (or the chosen one), if any, in
    # the right phase.
    chosen = Path(resume_from) if resume_from else None
    step, resume_notes = checkpoint.resume(state, config, run_dir, chosen)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        config_lib.save(config, run_dir / "config.yaml")
    accelerator.wait_for_everyone()
    logger = RunLogger(
        run_dir,
        config.log,
        accelerator.is_main_process,
        total,
        step,
        accelerator.device,
        trackers=accelerator if others else None,
        config_values=config_lib.to_dict(config),
    )
    # torchrun and accelerate launch say how many processes share this node
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    loader_config, note = fit_workers(config, local_processes)
    if note:
        logger.message(note)
    feed = DataFeed(
        loader_config,
        family,
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
        run_phases,
    )
    for note in [lock_note, *resume_notes]:
        if note:
            logger.message(note)
    if step:
        logger.message(f"resumed {run_dir} at step {step} ({phase_at(step, run_phases).name})")
    if accelerator.is_main_process:
        with reporting_full_disk(run_dir / "config_changes.jsonl"):
            _record_changes(run_dir, step, changes, logger)
    if config.run.compile and not compiles(config, backend):
        logger.message(
            f"run.compile applies on CUDA under DDP: this {backend.label} run on "
            f"{accelerator.device.type} trains eagerly"
        )
    plain_generator = plain_module(state.generator)

    rollbacks = Rollbacks(state, config, run_dir, logger)

    def save(at_step: int) -> Path:
        """Checkpoint `at_step`; if the weights went non-finite, roll back instead: `step` goes
        back to the newest checkpoint's, whose path is returned, and training goes on there."""
        nonlocal step
        _checked(state.health.read(), run_phases)  # a diverged run keeps its last good checkpoint
        try:
            path = checkpoint.save(state, run_dir, at_step, config, config.checkpoint.keep)
        except WeightsNotFinite as error:
            step, path = rollbacks.roll_back(error)
        return path

    def show(at_step: int) -> dict[str, float]:
        if validation is None:
            return {}
        scalars, grid = run_validation(plain_generator, settings, validation)
        logger.scalars(at_step, scalars)
        logger.image_grid(at_step, "val/grid", grid)
        with atomic_path(run_dir / "samples" / f"step-{at_step:08d}.png") as partial:
            save_image(grid, partial, format="png")
        return scalars

    if 0 < step < total:
        show(step)  # the validation curve goes on from the resumed step, with no gap

    # Loop: one phase step per iteration; the phase is derived from the step, never stored.
    try:
        with StopSignals() as signals:

            def stopped(saved: Path | None) -> Path:
                if accelerator.is_main_process:
                    write_marker(run_dir, signals.seen, step, saved)
                return run_dir

            # A stop signal held back during start-up ends the run before its first step: there
            # is nothing new to save, and the time before SLURM's kill is better left unused.
            if _agree(accelerator, signals.received is not None):
                logger.message(f"stop signal before step {step}: nothing new to save")
                return stopped(None)
            while step < total:
                phase = phase_at(step, run_phases)
                if config.optim.lr_decay != "none":
                    set_learning_rates(state, config.optim, step, total)
                losses = STEP_FUNCTIONS[phase.kind](state, settings, feed.batches(step))
                state.health.corrupt_samples += feed.take_skipped()
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
                    corrupt = sum_over_ranks(accelerator, health.corrupt_samples)
                    logger.tick(step, phase.name, _tick_extras(state, health, corrupt))
                    stop = _agree(accelerator, signals.received is not None)
                if step % config.log.image_every_steps == 0 and step < total:
                    show(step)

                # Save: every checkpoint.every_steps, at phase ends, at the end, or when signalled
                # (a save that rolls back sets `step` back: the loop trains on from there).
                due = step % config.checkpoint.every_steps == 0 or step in phase_ends
                if stop or due or step == total:
                    saved = save(step)
                if stop:
                    logger.message(
                        f"stop signal: checkpoint saved at step {step}; run the same "
                        "command again to continue"
                    )
                    return stopped(saved)

        # Finish: inference export and the validation figures of the trained net. The weights
        # were checked at the loop's save of this step, so this save cannot roll back (a finished
        # run run again with a non-finite checkpoint stops there in one line).
        save(step)
        # On every rank: gathering the fp32 master weights is a collective under DeepSpeed.
        nets = backend.export_nets(
            state, lambda: build_nets(config.model, config.data.image_px, config.masks.local_px)
        )
        if accelerator.is_main_process:
            save_export(
                run_dir / "export",
                nets.generator,
                nets.discriminator,
                config,
                tuple(fill_rgb.tolist()),
                step,
                tokenizer,
            )
            _report(run_dir, show(step), logger, validation)
            logger.flush()  # the last TensorBoard events: a full disk is still one line
        return run_dir
    finally:
        feed.close()
        logger.close()


def _tick_extras(state: TrainState, health: HealthReading, corrupt: int) -> dict[str, float]:
    """Health (`corrupt`: the run's corrupt samples, over all ranks) and learning rates, logged
    beside the losses at every tick."""
    extras = {
        "health/skipped_steps": float(health.skipped),
        "health/corrupt_samples": float(corrupt),
    }
    for name, optimizer in state.optimizers().items():
        extras[f"lr/{name}"] = float(optimizer.param_groups[0]["lr"])
    return extras


def _report(
    run_dir: Path, scalars: dict[str, float], logger: RunLogger, validation: ValidationSet | None
) -> None:
    lines = [
        f"run directory: {run_dir}",
        f"TensorBoard:   tensorboard --logdir {run_dir / 'tb'}",
        f"sample grid:   {max((run_dir / 'samples').glob('step-*.png'), default='-')}",
        f"export:        {run_dir / 'export'}",
    ]
    if validation is not None:
        lines.append(
            f"validation set: {len(validation.images)} images of split {validation.split!r}"
        )
    if scalars and validation is not None and validation.baselines:  # last: the run's verdict
        lines.append(f"validation: {versus_best(versus_baselines(scalars, validation))}")
    for line in lines:
        logger.message(line)


def train_command(
    config: str | None = None,
    resume: str | None = None,
    resume_from: str | None = None,
    overrides: list[str] = (),
) -> int:
    """`ganpaint train` and `train.py`: a config (a new run, or the same command again), or
    `--resume RUN_DIR` (its saved config, with overrides that keep the model and the data), or
    `--resume-from CHECKPOINT` (that checkpoint of its run)."""
    if resume_from and not (config or resume):
        resume = str(Path(resume_from).resolve().parent.parent)  # RUN/checkpoints/step-N
    if not (config or resume):
        raise UserError("give --config PRESET_OR_YAML (a run) or --resume RUN_DIR")
    if resume:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise UserError(
                f"--resume {resume}: no config.yaml there (not a ganpaint run directory)"
            )
        config, overrides = str(saved), [*overrides, f"run.dir={resume}"]
    overrides = list(overrides)
    if resume_from and not (Path(resume_from) / "state.json").is_file():
        raise UserError(f"--resume-from {resume_from}: not a checkpoint directory (no state.json)")
    # --resume reads the run's own config.yaml, which an earlier version may have written
    train(config_lib.load(config, overrides, saved=bool(resume)), resume_from=resume_from)
    shutdown()  # every rank done (only on success: a failed rank must not wait in a barrier)
    return 0
