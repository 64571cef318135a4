"""What differs between two configs, and which of those keys a resumed run may change.

A run resumed with other settings (`ganpaint train --resume RUN key=value`, or a changed YAML) is
compared with the config it saved: the model and the data it learns from stay fixed for the run
(`fixed_for_a_run`), and a checkpoint cannot be loaded into nets of another shape
(`MODEL_SHAPING_KEYS`, `shaping_differences`); everything else may change and is recorded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ganpaint.config.loading import to_dict
from ganpaint.config.sections import ModelConfig, TrainConfig

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
