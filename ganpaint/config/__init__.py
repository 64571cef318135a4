"""Typed training configuration: YAML + dotted overrides -> validated, frozen dataclasses.

The package re-exports every public name of its modules, so `from ganpaint import config` and
`from ganpaint.config import TrainConfig` are all a caller needs:

- sections.py: the section dataclasses every family shares (`TrainConfig`, `RunConfig`, ...) and
  the allowed values of the choice keys (`MASK_KINDS`, ...);
- families.py: the family table (`register_family`, `family_schema`, `model_config`), each
  family's own keys mixed into the sections, `LEGACY_KEYS`;
- rules.py: the cross-field rules (`validate`) and `micro_batch_size`;
- loading.py: presets, `load`, `from_dict`, `to_dict`, `to_yaml`, `save`, `config_command`;
- changes.py: what differs between two configs, and what a resumed run may change.

It imports no model code (the families register themselves when ganpaint/models/ is imported,
which the package arranges with `find_families_with`), nor torch.
"""

from ganpaint.config.changes import (
    MODEL_SHAPING_KEYS,
    differences,
    fixed_for_a_run,
    shaping_differences,
)
from ganpaint.config.families import (
    LEGACY_KEYS,
    FamilySchema,
    family_schema,
    find_families_with,
    model_config,
    register_family,
    unregister_family,
)
from ganpaint.config.loading import (
    config_command,
    from_dict,
    load,
    presets,
    resolve,
    save,
    to_dict,
    to_yaml,
)
from ganpaint.config.rules import micro_batch_size, validate
from ganpaint.config.sections import (
    BRUSH_PRESETS,
    COMPILE_MODES,
    CROPS,
    HOLE_FILLS,
    LOCAL_PLACEMENTS,
    LR_DECAYS,
    MASK_KINDS,
    MAX_BATCH_SIZE,
    OPTIMIZERS,
    PRECISIONS,
    PROGRESS_MODES,
    SECTION_TYPES,
    TRACKER_MODULES,
    CheckpointConfig,
    DataConfig,
    LogConfig,
    LossConfig,
    MaskConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TrainConfig,
)
from ganpaint.errors import ConfigError  # defined beside UserError; imported from here as well

__all__ = [
    "BRUSH_PRESETS",
    "COMPILE_MODES",
    "CROPS",
    "HOLE_FILLS",
    "LEGACY_KEYS",
    "LOCAL_PLACEMENTS",
    "LR_DECAYS",
    "MASK_KINDS",
    "MAX_BATCH_SIZE",
    "MODEL_SHAPING_KEYS",
    "OPTIMIZERS",
    "PRECISIONS",
    "PROGRESS_MODES",
    "SECTION_TYPES",
    "TRACKER_MODULES",
    "CheckpointConfig",
    "ConfigError",
    "DataConfig",
    "FamilySchema",
    "LogConfig",
    "LossConfig",
    "MaskConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "config_command",
    "differences",
    "family_schema",
    "find_families_with",
    "fixed_for_a_run",
    "from_dict",
    "load",
    "micro_batch_size",
    "model_config",
    "presets",
    "register_family",
    "resolve",
    "save",
    "shaping_differences",
    "to_dict",
    "to_yaml",
    "unregister_family",
    "validate",
]
