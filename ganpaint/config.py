"""Typed training configuration: YAML + dotted overrides -> validated, frozen dataclasses.

A config is loaded in three layers, each checked by OmegaConf against the dataclass schema below:
the defaults written here, then the YAML file, then `dotted.key=value` overrides from the command
line. An unknown key or a value of the wrong type fails at once; `validate()` then applies the
cross-field rules (hole <= local area <= image, phase lengths, family constraints). Every error is a
`ConfigError` with one line naming the key, raised before any work is done.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ganpaint.errors import UserError
from ganpaint.files import write_text_atomically

MASK_KINDS = ("center", "rect", "multi_rect", "brush")
BRUSH_PRESETS = ("thin", "medium", "thick")
LR_DECAYS = ("none", "cosine")
OPTIMIZERS = ("adadelta", "adam")
PRECISIONS = ("fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PROGRESS_MODES = ("auto", "rich", "plain", "none")
# accelerate's tracker names -> the module each needs
TRACKER_MODULES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
}
HOLE_FILLS = ("mean", "zero", "pyramid", "harmonic", "biharmonic", "tension")  # completion.HoleFill
LOCAL_PLACEMENTS = ("centred", "random")
CROPS = ("random", "centre")


class ConfigError(UserError, ValueError):
    """A configuration problem, described in one line that names the offending key."""


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/demo"  # run directory: config, checkpoints, logs, exports
    seed: int = 0
    mixed_precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; weights stay fp32)
    cpu: bool = False  # force the CPU even where a GPU is present
    channels_last: bool = True
    compile: bool = False  # torch.compile each net (on CUDA; the CPU always trains eagerly)
    compile_mode: str = "default"  # torch.compile mode; max-autotune compiles for many minutes
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
    crop: str = "random"  # random: GLCIC's scale + crop | centre: Resize + CenterCrop (DCGAN)
    captions: bool = False  # also yield each image's caption token ids (caption-conditioned nets)
    caption_tokens: int = 32  # caption length in tokens (truncated / padded)
    batch_size: int = 16  # global batch per optimiser step, over all processes
    workers: int = 2  # DataLoader workers per process
    shuffle_buffer: int = 256
    val_split: str = "val"
    val_images: int = 16  # fixed validation batch for image grids and hole PSNR; 0 = none
    val_shards: str = ""  # shard directory of the validation images; empty: `shards`


@dataclass(frozen=True)
class MaskConfig:
    kind: str = "rect"  # center | rect | multi_rect | brush
    hole_min_px: int = 16  # side range of a rectangular hole
    hole_max_px: int = 32
    local_px: int = 32  # side of the local area that holds the hole (GLCIC local D input)
    max_holes: int = 3  # multi_rect: up to this many holes
    brush: str = "medium"  # brush preset: thin | medium | thick
    # centred: the local area centred on the hole, clamped at the borders (GLCIC paper) | random:
    # placed uniformly, the hole anywhere inside it
    local_placement: str = "centred"


@dataclass(frozen=True)
class ModelConfig:
    family: str = "glcic"  # a registered family: `ganpaint models --list`
    width: int = 64  # generator base channels (papers: 64)
    disc_width: int = 64  # discriminator base channels (papers: 64)
    fc_features: int = 1024  # GLCIC discriminators' fully connected width
    latent_dim: int = 100  # dcgan z
    # caption families: rows of the word embedding; at least the shards' tokenizer vocabulary
    # (ganpaint's tokenizers hold at most 10,000 words)
    vocabulary_size: int = 10_000
    # The net's input in the hole: mean (the dataset's mean colour, GLCIC) | zero | pyramid |
    # harmonic | biharmonic | tension (smooth fills from the pixels around the hole)
    hole_fill: str = "mean"
    # Solver iterations of the smooth fill (harmonic sweeps, biharmonic and tension
    # conjugate-gradient steps); 0: the solver's default, converged at the image size. Fewer trade
    # exactness for speed.
    fill_iterations: int = 0
    # The tension fill's tension in [0, 1]: 0 the biharmonic (thin-plate), 1 the harmonic
    # (membrane) fill
    fill_tension: float = 0.2
    residual: bool = (
        False  # the generator adds a correction to its filled input (models/residual.py)
    )
    # glcic: rates of the completion net's four dilated rows (paper: 2, 4, 8, 16 at 256 px)
    dilations: list[int] = field(default_factory=lambda: [2, 4, 8, 16])


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
    # none: constant rates (the papers) | cosine: both rates fall from their value to 0 over the
    # run (schedule.total_steps), a function of the step alone, so a resume continues it exactly
    lr_decay: str = "none"


@dataclass(frozen=True)
class ScheduleConfig:
    completion_steps: int = 100  # GLCIC Tc: generator alone on the reconstruction loss
    discriminator_steps: int = 20  # GLCIC Td: discriminators alone, generator frozen
    total_steps: int = 300  # GLCIC T: end of the joint phase (all families)
    critic_steps: int = 1  # wgan_unet: critic updates per generator update
    # the generator alone on the reconstruction loss for the whole run, no discriminator or critic
    # updates (the WGAN U-Net write-up's "L2 only" ablation)
    reconstruction_only: bool = False


@dataclass(frozen=True)
class LossConfig:
    reconstruction_weight: float = 1.0  # lambda_rec
    adversarial_weight: float = 4e-4  # GLCIC alpha / Context Encoder lambda_adv
    label_smoothing: float = 0.0  # one-sided: real targets become 1 - smoothing
    clamp: float = (
        0.0  # wgan critic weight clamp; 0 = seed rule (0.03 if critic_steps > 1 else 0.05)
    )
    # Context Encoders: the reconstruction loss also covers a band overlap_px wide around the hole
    # (the context the net predicts as well), weighted overlap_weight times; 0 = the hole only
    overlap_px: int = 0
    overlap_weight: float = 10.0


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = 10  # scalars to TensorBoard, stats.jsonl and the console
    image_every_steps: int = 100  # image grid of the fixed validation batch
    progress: str = "auto"  # auto (rich on a terminal, plain lines otherwise) | rich | plain | none
    # experiment trackers: tensorboard (RUN/tb, with image grids) and any of accelerate's others
    # (wandb, mlflow, comet_ml, aim, clearml, dvclive), each installed separately
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


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


# Fields that change the shape of a network's parameters: a checkpoint made with other values
# cannot be resumed. Everything else (learning rates, logging, batch size) may change on resume.
MODEL_SHAPING_KEYS = (
    "model.family",
    "model.width",
    "model.disc_width",
    "model.fc_features",
    "model.latent_dim",
    "model.vocabulary_size",
    "model.residual",
    "model.dilations",
    "data.image_px",
    "masks.local_px",
)


def _one_line(error: Exception) -> str:
    """OmegaConf errors span several lines (full key, object type, ...): keep the first."""
    return str(error).strip().splitlines()[0]


def presets() -> dict[str, Path]:
    """The shipped presets by name (configs/NAME.yaml, packaged as ganpaint.configs)."""
    folder = resources.files("ganpaint.configs")
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def resolve(name_or_path: str | Path) -> Path:
    """A config file path as given, else the shipped preset of that name: `demo`, `demo.yaml` or
    the README's `configs/demo.yaml` (when run outside a checkout)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    known = presets()
    by_name = path.parent in (Path("."), Path("configs")) and path.suffix in ("", ".yaml")
    if by_name and path.stem in known:
        return known[path.stem]
    raise ConfigError(
        f"config file not found: {name_or_path} (presets: {', '.join(sorted(known))})"
    )


def load(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """Defaults <- YAML file (a path or a preset name) <- `dotted.key=value` overrides; validated.

    Raises ConfigError (one line) for a missing file, an unknown key, a wrong type or a failed rule.
    """
    schema = OmegaConf.structured(TrainConfig)
    layers = [schema]
    if path is not None:
        path = resolve(path)
        try:
            layer = OmegaConf.load(path)
        except Exception as error:  # yaml errors carry line numbers: keep them, on one line
            raise ConfigError(f"{path}: not valid YAML: {_one_line(error)}") from None
        if not isinstance(layer, DictConfig):
            raise ConfigError(
                f"{path}: the top level must be a mapping of sections (run:, data:, ...)"
            )
        layers.append(layer)
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
    optim, loss = config.optim, config.loss
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
    for key in (
        "data.image_px",
        "data.batch_size",
        "model.width",
        "model.disc_width",
        "model.fc_features",
        "model.latent_dim",
        "model.vocabulary_size",
        "optim.grad_accum_steps",
        "schedule.total_steps",
        "schedule.critic_steps",
        "log.every_steps",
        "log.image_every_steps",
        "checkpoint.every_steps",
        "checkpoint.keep",
        "run.max_bad_steps",
        "masks.max_holes",
        "data.caption_tokens",
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
        "loss.overlap_px",
        "loss.overlap_weight",
        "optim.weight_decay",
    ):
        _positive(key, _get(config, key), allow_zero=True)
    if not 0 <= run.seed < 2**32:  # numpy's seeding range
        raise ConfigError(f"config key 'run.seed': must be in [0, 2**32), got {run.seed}")
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
    if data.crop == "centre" and data.resize_min_px != data.resize_max_px:
        raise ConfigError(
            "config key 'data.resize_max_px': the centre crop scales the shortest side to one size "
            f"(resize_min_px = resize_max_px), got {data.resize_min_px} and {data.resize_max_px}"
        )
    _family_rules(config)
    if data.batch_size % (world_size * optim.grad_accum_steps):
        raise ConfigError(
            f"config key 'data.batch_size': {data.batch_size} is not divisible by "
            f"{world_size} processes x {optim.grad_accum_steps} accumulation steps"
        )


def _family_rules(config: TrainConfig) -> None:
    """The shared inpainting geometry, the phase lengths, then the family's own rules."""
    from ganpaint.models import registry  # the registry's modules import this one

    masks, image_px = config.masks, config.data.image_px
    try:
        family = registry.get(config.model.family)
    except UserError as error:
        raise ConfigError(f"config key 'model.family': {error}") from None
    if config.data.captions != family.captions:
        need = "is conditioned on captions: set" if family.captions else "takes no captions: unset"
        raise ConfigError(f"config key 'data.captions': {family.name} {need} data.captions")
    if config.schedule.reconstruction_only and not family.inpaints:
        raise ConfigError(
            f"config key 'schedule.reconstruction_only': {family.name} has no reconstruction loss"
        )
    if config.model.residual and not family.inpaints:
        raise ConfigError(f"config key 'model.residual': {family.name} fills no holes to correct")
    if not family.dilated and list(config.model.dilations) != list(ModelConfig().dilations):
        raise ConfigError(
            f"config key 'model.dilations': {family.name} has no dilated convolutions; leave it at "
            "its default"
        )
    if family.inpaints:
        if not 1 <= masks.hole_min_px <= masks.hole_max_px <= masks.local_px:
            raise ConfigError(
                "config key 'masks.hole_max_px': need 1 <= hole_min_px <= hole_max_px <= local_px, got "
                f"{masks.hole_min_px}, {masks.hole_max_px}, {masks.local_px}"
            )
        if masks.local_px > image_px:
            raise ConfigError(
                f"config key 'masks.local_px': local area {masks.local_px} px exceeds the image "
                f"({image_px} px)"
            )
    fixed = [plan.length_key for plan in family.phases if plan.length_key]
    if sum(_get(config.schedule, key) for key in fixed) > config.schedule.total_steps:
        lengths = " + ".join(fixed)
        raise ConfigError(
            f"config key 'schedule.total_steps': must be >= {lengths} for {family.name}, got "
            f"{config.schedule.total_steps}"
        )
    family.check(config)


def micro_batch_size(config: TrainConfig, processes: int) -> int:
    """Images per process per micro-batch: the global batch over processes x accumulation steps."""
    return config.data.batch_size // (processes * config.optim.grad_accum_steps)


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
    write_text_atomically(path, to_yaml(config))


def from_dict(values: dict) -> TrainConfig:
    """Rebuild a config from `to_dict` output (a checkpoint's or an export's copy), through the
    same schema and rules as a YAML file: ConfigError (one line) for anything else."""
    if not isinstance(values, dict):
        raise ConfigError(f"config: expected a mapping, got {type(values).__name__}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(values))
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise ConfigError(
            (f"config key {key!r}: " if key else "config: ") + _one_line(error)
        ) from None
    validate(config)
    return config


def shaping_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """Model-shaping keys whose values differ, as 'key: saved -> current' strings."""
    return [
        f"{key}: {_get(saved, key)!r} -> {_get(current, key)!r}"
        for key in MODEL_SHAPING_KEYS
        if _get(saved, key) != _get(current, key)
    ]


def _leaves(values: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_leaves(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differences(saved: TrainConfig, current: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Every key whose value differs: {dotted key: (saved, current)}."""
    before, after = _leaves(to_dict(saved)), _leaves(to_dict(current))
    return {key: (before[key], after[key]) for key in before if before[key] != after[key]}


def fixed_for_a_run(key: str) -> bool:
    """Keys a run keeps from start to end: the model and the data it learns from. Everything
    else (learning rates, schedule length, logging, checkpointing) may change on resume."""
    return key.startswith("model.") or key in MODEL_SHAPING_KEYS or key == "data.shards"


def config_command(list_presets: bool, show: str | None, overrides: list[str]) -> int:
    """`ganpaint config`: the preset names, or one config resolved with every key."""
    if show is None or list_presets:
        for name, path in sorted(presets().items()):
            print(f"{name:<24} {path}")
        return 0
    print(to_yaml(load(show, overrides)), end="")
    return 0
