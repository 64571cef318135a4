"""Typed training configuration: YAML + dotted overrides -> validated, frozen dataclasses.

A config is loaded in three layers, each checked by OmegaConf against the dataclass schema below:
the defaults written here, then the YAML file, then `dotted.key=value` overrides from the command
line. An unknown key or a value of the wrong type fails at once; `validate()` then applies the
cross-field rules (hole <= local area <= image, phase lengths, family constraints). Every error is a
`ConfigError` with one line naming the key, raised before any work is done.

The sections below hold the settings every model family shares. A family adds its own (GLCIC's
`model.fc_features`, wgan_unet's `schedule.critic_steps`) by registering a small dataclass per
section with `register_family` when its module in ganpaint/models/ is imported: the schema of a
config is the shared one with its family's dataclasses mixed in. Models import this module, never
the reverse; the package has them imported before the first config is read (`find_families_with`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ganpaint.errors import ConfigError  # defined beside UserError; imported from here as well
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
# The largest global batch accepted: far above any preset (96), and a typo like 1000000000
# otherwise ends in a terabyte allocation after the whole start-up.
MAX_BATCH_SIZE = 65536


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
    # Rollbacks to the newest checkpoint allowed when weights or optimiser state go inf/NaN (they
    # are never saved); one more stops the run, the last good checkpoint kept
    max_rollbacks: int = 2
    # Seconds the processes of a launch wait for each other to form the group (then one line)
    rendezvous_timeout_s: float = 300.0


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
    # shards and val_shards may be URLs: https://, http://, s3://, gs:// (docs/remote_shards.md)
    remote_timeout_s: float = 300.0  # a remote read's longest time without a byte, retries included
    on_bad_shard: str = "fail"  # a remote shard whose sha256 is not the manifest's: fail | skip
    cache_dir: str = ""  # local directory keeping verified remote shards for later epochs
    cache_max_gb: float = 50.0  # the cache's bound: least recently used shards go first


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
    # The lengths of a completion phase (the generator alone on the reconstruction loss; GLCIC's
    # Tc) and a discriminator phase (the discriminators alone, generator frozen; GLCIC's Td), for
    # the families whose phases read them (ganpaint/models/family.py, PhasePlan.length)
    completion_steps: int = 100
    discriminator_steps: int = 20
    total_steps: int = 300  # GLCIC T: end of the joint phase (all families)
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
# cannot be resumed. So do a family's own model settings (what its builder reads). Everything else
# (learning rates, logging, batch size) may change on resume.
MODEL_SHAPING_KEYS = (
    "model.family",
    "model.width",
    "model.disc_width",
    "model.residual",
    "data.image_px",
    "masks.local_px",
)
# Every config once held these keys, whatever its family; they now belong to the families that
# use them. Configs saved then (a run's config.yaml, a checkpoint's state.json, an export's
# metadata) are read with the ones their family lacks dropped.
LEGACY_KEYS = (
    "model.fc_features",
    "model.latent_dim",
    "model.vocabulary_size",
    "model.dilations",
    "schedule.critic_steps",
)
SECTION_TYPES = {
    "run": RunConfig,
    "data": DataConfig,
    "masks": MaskConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "loss": LossConfig,
    "log": LogConfig,
    "checkpoint": CheckpointConfig,
}


@dataclass(frozen=True)
class FamilySchema:
    """What config knows of a registered model family: its sections with its own keys mixed in
    (the class of config.model for GLCIC is ModelConfig plus GLCICSettings), and its rules."""

    name: str
    sections: dict[str, type]  # section name -> the shared class with the family's fields added
    own_keys: tuple[str, ...]  # the family's own keys, dotted: ("model.fc_features", ...)
    rules: Callable[[TrainConfig], None]  # raises ConfigError; run after the shared rules

    def defaults(self) -> TrainConfig:
        """Every key of the family's config at its default."""
        sections = {name: section() for name, section in self.sections.items()}
        return TrainConfig(**{**sections, "model": self.model_section()(family=self.name)})

    def model_section(self) -> type:
        return self.sections.get("model", ModelConfig)

    def describe_keys(self) -> str:
        if not self.own_keys:
            return "it has no settings of its own"
        return "its settings are " + ", ".join(self.own_keys)


_FAMILIES: dict[str, FamilySchema] = {}


def _no_finder() -> None:
    """Until the package sets its finder (ganpaint/__init__.py), the families registered so far."""


_find_families: Callable[[], None] = _no_finder


def find_families_with(finder: Callable[[], None]) -> None:
    """Set what registers the families before a config naming one is read: the package imports
    ganpaint/models/ (whose family modules call `register_family`) at that moment, so neither this
    module nor `import ganpaint` imports model code."""
    global _find_families
    _find_families = finder


def register_family(
    name: str, settings: Mapping[str, type], rules: Callable[[TrainConfig], None]
) -> FamilySchema:
    """Declare a family's own keys and rules (or replace those of the same name): `settings` maps
    a section ("model", "schedule", ...) to a frozen dataclass of the keys the family adds to it,
    each with its default; `rules(config)` raises ConfigError for a config it cannot train."""
    sections, own_keys = {}, []
    for section, extra in settings.items():
        base = SECTION_TYPES[section]
        shared = {entry.name for entry in dataclasses.fields(base)}
        added = [entry.name for entry in dataclasses.fields(extra)]
        if shared & set(added):
            raise ValueError(
                f"{name}: {section} already has {', '.join(sorted(shared & set(added)))}"
            )
        # The shared fields first, then the family's; named like its base so that OmegaConf's
        # messages read "Key 'x' not in 'ModelConfig'", its repr naming the family.
        mixed = dataclasses.make_dataclass(
            base.__name__,
            [],
            bases=(extra, base),
            frozen=True,
            namespace={"__reduce__": _reduce_to(section, name)},
        )
        mixed.__qualname__, mixed.__module__ = f"{base.__name__}[{name}]", __name__
        sections[section] = mixed
        own_keys += [f"{section}.{key}" for key in added]
    schema = FamilySchema(name, sections, tuple(own_keys), rules)
    _FAMILIES[name] = schema
    return schema


def _reduce_to(section: str, family: str) -> Callable[[Any], tuple]:
    """How a section with a family's keys pickles: its class is made at registration, so it is
    found again by family and section, not by name."""

    def reduce(values: Any) -> tuple:
        fields = {entry.name: getattr(values, entry.name) for entry in dataclasses.fields(values)}
        return _family_section, (family, section, fields)

    return reduce


def _family_section(family: str, section: str, fields: dict[str, Any]) -> Any:
    return family_schema(family).sections[section](**fields)


def unregister_family(name: str) -> None:
    _FAMILIES.pop(name, None)


def family_schema(name: str) -> FamilySchema:
    """The registered family called `name`; ConfigError naming the known ones otherwise."""
    _find_families()  # a no-op once ganpaint/models/ is imported
    try:
        return _FAMILIES[name]
    except KeyError:
        known = ", ".join(_FAMILIES)
        raise ConfigError(
            f"config key 'model.family': unknown model family {name!r}: known families are {known}"
        ) from None


def model_config(family: str, **values: Any) -> ModelConfig:
    """A model section for `family`, its own settings at their defaults unless given in `values`
    (nets for tools and tests: `build_nets(model_config(name, width=8), 64, 32)`)."""
    return family_schema(family).model_section()(family=family, **values)


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
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    saved: bool = False,
) -> TrainConfig:
    """Defaults <- YAML file (a path or a preset name) <- `dotted.key=value` overrides; validated.
    `saved`: the file is a run's own config.yaml, written perhaps by an earlier version (its
    `LEGACY_KEYS` that the family lacks are dropped, not refused).

    Raises ConfigError (one line) for a missing file, an unknown key, a wrong type or a failed rule.
    """
    layers = []
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
    except OmegaConfBaseException as error:
        raise _config_error(error) from None
    return _merge(layers, saved_layers=1 if saved and path is not None else 0)


def _config_error(error: OmegaConfBaseException) -> ConfigError:
    key = getattr(error, "full_key", None)
    return ConfigError((f"config key {key!r}: " if key else "config: ") + _one_line(error))


def _merge(layers: list[DictConfig], saved_layers: int = 0) -> TrainConfig:
    """The defaults of the family the layers name, each layer merged over them in order, checked
    and validated. The first `saved_layers` layers were saved by ganpaint, maybe by an earlier
    version: their legacy keys are dropped where the family lacks them."""
    try:
        schema = family_schema(_family_name(layers))
        for index, layer in enumerate(layers):
            _screen_family_keys(layer, schema, saved=index < saved_layers)
        merged = OmegaConf.merge(OmegaConf.structured(schema.defaults()), *layers)
        config = OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise _config_error(error) from None
    validate(config)
    return config


def _family_name(layers: list[DictConfig]) -> str:
    """model.family as the last layer that sets it says (the default otherwise)."""
    name = ModelConfig.family
    for layer in layers:
        model = layer.get("model")
        if isinstance(model, DictConfig) and model.get("family") is not None:
            name = str(model.get("family"))
    return name


def _screen_family_keys(layer: DictConfig, schema: FamilySchema, saved: bool) -> None:
    """A key of another family (or a legacy key) that this family lacks, refused in one line; in
    a saved layer, a legacy key is dropped instead (every config used to hold them)."""
    others = {key for other in _FAMILIES.values() for key in other.own_keys}
    for key in sorted((others | set(LEGACY_KEYS)) - set(schema.own_keys)):
        section, name = key.split(".", 1)
        values = layer.get(section)
        if not isinstance(values, DictConfig) or name not in values:
            continue
        if saved and key in LEGACY_KEYS:
            del values[name]
            continue
        raise ConfigError(
            f"config key {key!r}: {schema.name} has no such setting; {schema.describe_keys()}"
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
        "optim.grad_accum_steps",
        "schedule.total_steps",
        "log.every_steps",
        "log.image_every_steps",
        "checkpoint.every_steps",
        "checkpoint.keep",
        "run.max_bad_steps",
        "run.rendezvous_timeout_s",
        "masks.max_holes",
        "data.caption_tokens",
        "optim.generator_lr",
        "optim.discriminator_lr",
    ):
        _positive(key, _get(config, key))
    for key in ("optim.beta1", "optim.beta2"):  # Adam's; NaN fails the test too
        if not 0 <= _get(config, key) < 1:
            raise ConfigError(f"config key {key!r}: must be in [0, 1), got {_get(config, key)}")
    if data.batch_size > MAX_BATCH_SIZE:
        raise ConfigError(
            f"config key 'data.batch_size': must be at most {MAX_BATCH_SIZE} images per optimiser "
            f"step (over all processes), got {data.batch_size}"
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
    family_schema(model.family).rules(config)  # the family's rules (ganpaint/models/family.py)
    if data.batch_size % (world_size * optim.grad_accum_steps):
        raise ConfigError(
            f"config key 'data.batch_size': {data.batch_size} is not divisible by "
            f"{world_size} processes x {optim.grad_accum_steps} accumulation steps"
        )


def micro_batch_size(config: TrainConfig, processes: int) -> int:
    """Images per process per micro-batch: the global batch over processes x accumulation steps."""
    return config.data.batch_size // (processes * config.optim.grad_accum_steps)


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _without_credentials(config: TrainConfig) -> TrainConfig:
    """The config with credentials in shard URLs masked (https://user:pass@... -> ***@): what is
    saved (config.yaml, checkpoints, exports) or logged never holds them."""
    from ganpaint.data.remote import mask

    data = config.data
    masked = dataclasses.replace(data, shards=mask(data.shards), val_shards=mask(data.val_shards))
    return config if masked == data else dataclasses.replace(config, data=masked)


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(_without_credentials(config))


def to_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(_without_credentials(config)))


def save(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config (every field, defaults included) atomically."""
    write_text_atomically(path, to_yaml(config))


def from_dict(values: dict) -> TrainConfig:
    """Rebuild a config from `to_dict` output (a checkpoint's or an export's copy, maybe written
    by an earlier version: see LEGACY_KEYS), through the same schema and rules as a YAML file:
    ConfigError (one line) for anything else."""
    if not isinstance(values, dict):
        raise ConfigError(f"config: expected a mapping, got {type(values).__name__}")
    try:
        layer = OmegaConf.create(values)
    except OmegaConfBaseException as error:
        raise _config_error(error) from None
    return _merge([layer], saved_layers=1)


def _shapes_nets(key: str) -> bool:
    """MODEL_SHAPING_KEYS, and every model key a family adds (its builder reads them)."""
    section, _, name = key.partition(".")
    shared = {entry.name for entry in dataclasses.fields(ModelConfig)}
    return key in MODEL_SHAPING_KEYS or (section == "model" and name not in shared)


def shaping_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """Model-shaping keys whose values differ, as 'key: saved -> current' strings (a key only one
    family has reads None in the other)."""
    before, after = _leaves(to_dict(saved)), _leaves(to_dict(current))
    return [
        f"{key}: {before.get(key)!r} -> {after.get(key)!r}"
        for key in dict.fromkeys([*before, *after])
        if _shapes_nets(key) and before.get(key) != after.get(key)
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
    """Every key whose value differs: {dotted key: (saved, current)}; a key only one of them has
    (another family's) reads None in the other."""
    before, after = _leaves(to_dict(saved)), _leaves(to_dict(current))
    return {
        key: (before.get(key), after.get(key))
        for key in dict.fromkeys([*before, *after])
        if before.get(key) != after.get(key)
    }


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
