"""The family table: each model family's own config keys and rules, mixed into the sections.

The sections in ganpaint/config/sections.py hold the settings every model family shares. A family
adds its own (GLCIC's `model.fc_features`, wgan_unet's `schedule.critic_steps`) by registering a
small dataclass per section with `register_family` when its module in ganpaint/models/ is imported:
the schema of a config is the shared one with its family's dataclasses mixed in. Models import the
config, never the reverse; the package has them imported before the first config is read
(`find_families_with`). Keys of another family, and `LEGACY_KEYS`, are screened out here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from ganpaint.config.sections import SECTION_TYPES, ModelConfig, TrainConfig
from ganpaint.errors import ConfigError

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


def screen_family_keys(layer: DictConfig, schema: FamilySchema, saved: bool) -> None:
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
