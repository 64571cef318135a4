"""Typed training configuration: YAML + dotted overrides -> validated, frozen dataclasses.

A config is loaded in three layers, each checked by OmegaConf against the dataclass schema below:
the defaults written here, then the YAML file, then `dotted.key=value` overrides from the command
line. An unknown key or a value of the wrong type fails at once; `validate()` then applies the
cross-field rules (hole <= local area <= image, phase lengths, family constraints). Every error is a
`ConfigError` with one line naming the key, raised before any work is done.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ganpaint.errors import UserError

FAMILIES = ("glcic", "context_encoder", "wgan_unet", "dcgan")
MASK_KINDS = ("center", "rect", "multi_rect", "brush")
BRUSH_PRESETS = ("thin", "medium", "thick")
OPTIMIZERS = ("adadelta", "adam")
PRECISIONS = ("fp32", "bf16", "fp16")
PROGRESS_MODES = ("auto", "rich", "plain", "none")
HOLE_FILLS = ("mean", "zero", "pyramid", "harmonic")
PAPER_DILATIONS = (2, 4, 8, 16)  # GLCIC Table 1: the four dilated rows of the completion net


class ConfigError(UserError, ValueError):
    """A configuration problem, described in one line that names the offending key."""


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/demo"  # run directory: config, checkpoints, logs, exports
    seed: int = 0
    mixed_precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; weights stay fp32)
    cpu: bool = False  # force the CPU even where a GPU is present
    channels_last: bool = True
    compile: bool = False  # torch.compile the per-phase step
    sync_batchnorm: bool = False
    deepspeed_config: str = ""  # path to a DeepSpeed JSON; empty = plain DDP
    max_bad_steps: int = 20  # consecutive non-finite losses before the run stops


@dataclass(frozen=True)
class DataConfig:
    shards: str = "shards/synthetic"  # directory holding manifest.json and the tar shards
    image_px: int = 64  # side of the square training crop
    resize_min_px: int = 64  # shortest side scaled to a random size in [min, max] before cropping
    resize_max_px: int = 64
    hflip: bool = True
    batch_size: int = 16  # global batch per optimiser step, over all processes
    workers: int = 2  # DataLoader workers per process
    shuffle_buffer: int = 256
    val_split: str = "val"
    val_images: int = 16  # fixed validation batch for image grids and hole PSNR
    val_shards: str = ""  # shard directory of the validation images; empty: `shards`


@dataclass(frozen=True)
class MaskConfig:
    kind: str = "rect"  # center | rect | multi_rect | brush
    hole_min_px: int = 16  # side range of a rectangular hole
    hole_max_px: int = 32
    local_px: int = 32  # side of the local area that holds the hole (GLCIC local D input)
    max_holes: int = 3  # multi_rect: up to this many holes
    brush: str = "medium"  # brush preset: thin | medium | thick


@dataclass(frozen=True)
class ModelConfig:
    family: str = "glcic"  # glcic | context_encoder | wgan_unet | dcgan
    width: int = 64  # generator base channels (papers: 64)
    disc_width: int = 64  # discriminator base channels (papers: 64)
    fc_features: int = 1024  # GLCIC discriminators' fully connected width
    latent_dim: int = 100  # dcgan z
    hole_fill: str = (
        "mean"  # the net's input fill: mean (dataset colour, GLCIC) | zero | pyramid | harmonic
    )
    residual: bool = False  # the generator adds a correction to its filled input (last layer zero)
    dilations: list[int] = field(default_factory=lambda: list(PAPER_DILATIONS))  # glcic rows 7-10


@dataclass(frozen=True)
class OptimConfig:
    generator: str = "adadelta"  # adadelta | adam
    discriminator: str = "adadelta"
    generator_lr: float = 1.0
    discriminator_lr: float = 1.0
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_accum_steps: int = 1


@dataclass(frozen=True)
class ScheduleConfig:
    completion_steps: int = 100  # GLCIC Tc: generator alone on the reconstruction loss
    discriminator_steps: int = 20  # GLCIC Td: discriminators alone, generator frozen
    total_steps: int = 300  # GLCIC T: end of the joint phase (all families)
    critic_steps: int = 1  # wgan_unet: critic updates per generator update


@dataclass(frozen=True)
class LossConfig:
    reconstruction_weight: float = 1.0  # lambda_rec
    adversarial_weight: float = 4e-4  # GLCIC alpha / Context Encoder lambda_adv
    label_smoothing: float = 0.0  # one-sided: real targets become 1 - smoothing
    clamp: float = (
        0.0  # wgan critic weight clamp; 0 = seed rule (0.03 if critic_steps > 1 else 0.05)
    )


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = 10  # scalars to TensorBoard, stats.jsonl and the console
    image_every_steps: int = 100  # image grid of the fixed validation batch
    progress: str = "auto"  # auto (rich on a terminal, plain lines otherwise) | rich | plain | none


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = 100  # also saved at every phase boundary and at the end
    keep: int = 3  # newest checkpoints kept


@dataclass(frozen=True)
class TrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    log: LogConfig = field(default_factory=LogConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# Fields that change the shape of a network's parameters, or what they compute: a checkpoint made
# with other values cannot be resumed. Everything else (learning rates, logging, batch size) may change on resume.
MODEL_SHAPING_KEYS = (
    "model.family",
    "model.width",
    "model.disc_width",
    "model.fc_features",
    "model.latent_dim",
    "model.residual",
    "model.dilations",
    "data.image_px",
    "masks.local_px",
)


def _one_line(error: Exception) -> str:
    """OmegaConf errors span several lines (full key, object type, ...): keep the first."""
    return str(error).strip().splitlines()[0]


def load(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Defaults <- YAML file <- `dotted.key=value` overrides; validated; frozen.

    Raises ConfigError (one line) for a missing file, an unknown key, a wrong type or a failed rule.
    """
    schema = OmegaConf.structured(TrainConfig)
    layers = [schema]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            layers.append(OmegaConf.load(path))
        except Exception as error:  # yaml errors carry line numbers: keep them, on one line
            raise ConfigError(f"{path}: not valid YAML: {_one_line(error)}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form dotted.key=value")
    try:
        if overrides:
            layers.append(OmegaConf.from_dotlist(list(overrides)))
        merged = OmegaConf.merge(*layers)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        prefix = f"config key {key!r}: " if key else "config: "
        raise ConfigError(prefix + _one_line(error)) from None
    validate(config)
    return config


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {', '.join(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config key {key!r}: must be {bound}, got {value}")


def validate(config: TrainConfig, world_size: int = 1) -> None:
    """Cross-field rules. `world_size` is checked against the batch once processes are known."""
    run, data, masks, model = config.run, config.data, config.masks, config.model
    optim, schedule, loss = config.optim, config.schedule, config.loss
    _choice("model.family", model.family, FAMILIES)
    _choice("masks.kind", masks.kind, MASK_KINDS)
    _choice("masks.brush", masks.brush, BRUSH_PRESETS)
    _choice("model.hole_fill", model.hole_fill, HOLE_FILLS)
    _choice("optim.generator", optim.generator, OPTIMIZERS)
    _choice("optim.discriminator", optim.discriminator, OPTIMIZERS)
    _choice("run.mixed_precision", run.mixed_precision, PRECISIONS)
    _choice("log.progress", config.log.progress, PROGRESS_MODES)
    for key in (
        "data.image_px",
        "data.batch_size",
        "model.width",
        "model.disc_width",
        "model.fc_features",
        "model.latent_dim",
        "optim.grad_accum_steps",
        "schedule.total_steps",
        "schedule.critic_steps",
        "log.every_steps",
        "log.image_every_steps",
        "checkpoint.every_steps",
        "checkpoint.keep",
        "run.max_bad_steps",
        "masks.max_holes",
    ):
        _positive(key, _get(config, key))
    for key in (
        "data.workers",
        "data.val_images",
        "schedule.completion_steps",
        "schedule.discriminator_steps",
        "loss.adversarial_weight",
        "loss.reconstruction_weight",
        "loss.clamp",
        "optim.weight_decay",
    ):
        _positive(key, _get(config, key), allow_zero=True)
    if not 0 <= loss.label_smoothing < 0.5:
        raise ConfigError(
            f"config key 'loss.label_smoothing': must be in [0, 0.5), got {loss.label_smoothing}"
        )
    if data.image_px % 16:
        raise ConfigError(
            f"config key 'data.image_px': must be a multiple of 16, got {data.image_px}"
        )
    if not data.image_px <= data.resize_min_px <= data.resize_max_px:
        raise ConfigError(
            "config key 'data.resize_min_px': need image_px <= resize_min_px <= resize_max_px, got "
            f"{data.image_px} <= {data.resize_min_px} <= {data.resize_max_px}"
        )
    if model.family != "dcgan":
        if not 1 <= masks.hole_min_px <= masks.hole_max_px <= masks.local_px:
            raise ConfigError(
                "config key 'masks.hole_max_px': need 1 <= hole_min_px <= hole_max_px <= local_px, got "
                f"{masks.hole_min_px}, {masks.hole_max_px}, {masks.local_px}"
            )
        if masks.local_px > data.image_px:
            raise ConfigError(
                f"config key 'masks.local_px': local area {masks.local_px} px exceeds the image "
                f"({data.image_px} px)"
            )
    if model.family in ("context_encoder", "wgan_unet"):
        # These generators predict the centre square only: the hole is that square, fixed.
        if masks.kind != "center":
            raise ConfigError(
                f"config key 'masks.kind': {model.family} predicts the centre; use 'center'"
            )
        if masks.local_px * 2 != data.image_px or masks.hole_max_px != masks.local_px:
            raise ConfigError(
                f"config key 'masks.local_px': {model.family} needs local_px = hole_max_px = "
                f"image_px / 2, got local_px={masks.local_px}, image_px={data.image_px}"
            )
    if model.family == "glcic":
        if schedule.completion_steps + schedule.discriminator_steps > schedule.total_steps:
            raise ConfigError(
                "config key 'schedule.total_steps': must be >= completion_steps + discriminator_steps "
                f"({schedule.completion_steps} + {schedule.discriminator_steps}), got {schedule.total_steps}"
            )
        if masks.local_px % 16:
            raise ConfigError(
                f"config key 'masks.local_px': must be a multiple of 16, got {masks.local_px}"
            )
    if len(model.dilations) != len(PAPER_DILATIONS) or min(model.dilations) < 1:
        raise ConfigError(
            f"config key 'model.dilations': need {len(PAPER_DILATIONS)} rates >= 1 (the completion "
            f"net's dilated rows), got {list(model.dilations)}"
        )
    if model.family == "dcgan" and data.image_px != 64:
        raise ConfigError(
            f"config key 'data.image_px': dcgan generates 64 px images, got {data.image_px}"
        )
    if data.batch_size % (world_size * optim.grad_accum_steps):
        raise ConfigError(
            f"config key 'data.batch_size': {data.batch_size} is not divisible by "
            f"{world_size} processes x {optim.grad_accum_steps} accumulation steps"
        )


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config (every field, defaults included) atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(to_yaml(config))
    tmp.replace(path)


def from_dict(values: dict) -> TrainConfig:
    """Rebuild a config from `to_dict` output (a checkpoint's or an export's copy)."""
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(values))
    return OmegaConf.to_object(merged)


def shaping_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """Model-shaping keys whose values differ, as 'key: saved -> current' strings."""
    return [
        f"{key}: {_get(saved, key)!r} -> {_get(current, key)!r}"
        for key in MODEL_SHAPING_KEYS
        if _get(saved, key) != _get(current, key)
    ]
