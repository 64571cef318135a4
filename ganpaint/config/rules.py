"""The cross-field rules of a config (`validate`), and the per-process batch they imply.

OmegaConf checks each key's type as a config is merged; `validate` then applies what one key
cannot say alone: choices, ranges, hole <= local area <= image, batch divisibility, and last the
rules of the config's family. Each failure is a `ConfigError` of one line naming the key. The
checks run in a fixed order, so a config with several faults always reports the same one.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from ganpaint.config.families import family_schema
from ganpaint.config.sections import (
    BRUSH_PRESETS,
    COMPILE_MODES,
    CROPS,
    HOLE_FILLS,
    LOCAL_PLACEMENTS,
    LR_DECAYS,
    MASK_KINDS,
    MAX_BATCH_SIZE,
    ON_BAD_SHARD,
    OPTIMIZERS,
    PRECISIONS,
    PROGRESS_MODES,
    TRACKER_MODULES,
    DataConfig,
    TrainConfig,
)
from ganpaint.errors import ConfigError


def validate(config: TrainConfig, world_size: int = 1) -> None:
    """Cross-field rules. `world_size` is checked against the batch once processes are known."""
    data, optim = config.data, config.optim
    _check_choices(config)
    _check_numbers(config)
    _check_image_sizes(data)
    family_schema(config.model.family).rules(config)  # the family's (ganpaint/models/family.py)
    if data.batch_size % (world_size * optim.grad_accum_steps):
        raise ConfigError(
            f"config key 'data.batch_size': {data.batch_size} is not divisible by "
            f"{world_size} processes x {optim.grad_accum_steps} accumulation steps"
        )


def micro_batch_size(config: TrainConfig, processes: int) -> int:
    """Images per process per micro-batch: the global batch over processes x accumulation steps."""
    return config.data.batch_size // (processes * config.optim.grad_accum_steps)


def _check_choices(config: TrainConfig) -> None:
    """Keys that name one of a few choices, the fill's settings among them, and the trackers."""
    run, data, masks = config.run, config.data, config.masks
    model, optim = config.model, config.optim
    _choice("masks.kind", masks.kind, MASK_KINDS)
    _choice("masks.brush", masks.brush, BRUSH_PRESETS)
    _choice("model.hole_fill", model.hole_fill, HOLE_FILLS)
    if model.fill_iterations < 0:
        raise ConfigError(
            f"config key 'model.fill_iterations': need >= 0, got {model.fill_iterations}"
        )
    if not 0 <= model.fill_tension <= 1:
        raise ConfigError(
            f"config key 'model.fill_tension': need a value in [0, 1], got {model.fill_tension}"
        )
    _choice("masks.local_placement", masks.local_placement, LOCAL_PLACEMENTS)
    _choice("data.crop", data.crop, CROPS)
    _choice("data.on_bad_shard", data.on_bad_shard, ON_BAD_SHARD)
    _choice("optim.generator", optim.generator, OPTIMIZERS)
    _choice("optim.discriminator", optim.discriminator, OPTIMIZERS)
    _choice("optim.lr_decay", optim.lr_decay, LR_DECAYS)
    _choice("run.mixed_precision", run.mixed_precision, PRECISIONS)
    _choice("run.compile_mode", run.compile_mode, COMPILE_MODES)
    _choice("log.progress", config.log.progress, PROGRESS_MODES)
    for tracker in config.log.trackers:
        _choice("log.trackers", tracker, tuple(TRACKER_MODULES))
        if importlib.util.find_spec(TRACKER_MODULES[tracker]) is None:
            raise ConfigError(
                f"config key 'log.trackers': {tracker} is not installed: pip install {tracker}"
            )


def _check_numbers(config: TrainConfig) -> None:
    """Counts, lengths, rates and weights: positive, non-negative or within their range."""
    for key in (
        "data.image_px",
        "data.batch_size",
        "model.width",
        "model.disc_width",
        "optim.grad_accum_steps",
        "schedule.total_steps",
        "log.every_steps",
        "log.image_every_steps",
        "checkpoint.every_steps",
        "checkpoint.keep",
        "run.max_bad_steps",
        "run.rendezvous_timeout_s",
        "data.remote_timeout_s",
        "data.cache_max_gb",
        "masks.max_holes",
        "data.caption_tokens",
        "optim.generator_lr",
        "optim.discriminator_lr",
    ):
        _positive(key, _get(config, key))
    for key in ("optim.beta1", "optim.beta2"):  # Adam's; NaN fails the test too
        if not 0 <= _get(config, key) < 1:
            raise ConfigError(f"config key {key!r}: must be in [0, 1), got {_get(config, key)}")
    if config.data.batch_size > MAX_BATCH_SIZE:
        raise ConfigError(
            f"config key 'data.batch_size': must be at most {MAX_BATCH_SIZE} images per optimiser "
            f"step (over all processes), got {config.data.batch_size}"
        )
    for key in (
        "data.workers",
        "data.val_images",
        "schedule.completion_steps",
        "schedule.discriminator_steps",
        "loss.adversarial_weight",
        "loss.reconstruction_weight",
        "loss.clamp",
        "loss.overlap_px",
        "loss.overlap_weight",
        "optim.weight_decay",
        "run.max_rollbacks",
    ):
        _positive(key, _get(config, key), allow_zero=True)
    if not 0 <= config.run.seed < 2**32:  # numpy's seeding range
        raise ConfigError(f"config key 'run.seed': must be in [0, 2**32), got {config.run.seed}")
    smoothing = config.loss.label_smoothing
    if not 0 <= smoothing < 0.5:
        raise ConfigError(
            f"config key 'loss.label_smoothing': must be in [0, 0.5), got {smoothing}"
        )


def _check_image_sizes(data: DataConfig) -> None:
    """The training crop, and the sizes the images are scaled to before it is cut."""
    if data.image_px % 16:
        raise ConfigError(
            f"config key 'data.image_px': must be a multiple of 16, got {data.image_px}"
        )
    if not data.image_px <= data.resize_min_px <= data.resize_max_px:
        raise ConfigError(
            "config key 'data.resize_min_px': need image_px <= resize_min_px <= resize_max_px, got "
            f"{data.image_px} <= {data.resize_min_px} <= {data.resize_max_px}"
        )
    if data.crop == "centre" and data.resize_min_px != data.resize_max_px:
        raise ConfigError(
            "config key 'data.resize_max_px': the centre crop scales the shortest side to one size "
            f"(resize_min_px = resize_max_px), got {data.resize_min_px} and {data.resize_max_px}"
        )


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    finite = math.isfinite(value)  # inf and NaN pass every comparison below but train NaN
    if not finite or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(
            f"config key {key!r}: must be {'' if finite else 'finite and '}{bound}, got {value}"
        )


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config
