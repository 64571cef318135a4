"""Reading and writing configs: presets, YAML + overrides -> a validated `TrainConfig`, and back.

A config is loaded in three layers, each checked by OmegaConf against the schema of its family
(ganpaint/config/sections.py and families.py): the defaults, then the YAML file, then
`dotted.key=value` overrides from the command line. An unknown key or a value of the wrong type
fails at once; `validate()` (ganpaint/config/rules.py) then applies the cross-field rules. Every
error is a `ConfigError` with one line naming the key, raised before any work is done. Written
configs (`to_yaml`, `to_dict`, `save`) hold every key, credentials in shard URLs masked.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ganpaint.config.families import family_schema, screen_family_keys
from ganpaint.config.rules import validate
from ganpaint.config.sections import ModelConfig, TrainConfig
from ganpaint.errors import ConfigError
from ganpaint.files import write_text_atomically


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
            screen_family_keys(layer, schema, saved=index < saved_layers)
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


def config_command(list_presets: bool, show: str | None, overrides: list[str]) -> int:
    """`ganpaint config`: the preset names, or one config resolved with every key."""
    if show is None or list_presets:
        for name, path in sorted(presets().items()):
            print(f"{name:<24} {path}")
        return 0
    print(to_yaml(load(show, overrides)), end="")
    return 0
