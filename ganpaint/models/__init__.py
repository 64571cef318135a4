"""The model zoo: the nets of every family, each family's declaration beside them, and the registry.

Importing this package registers every family (ganpaint/models/registry.py) with the config
schema. `registry.get(name)` returns a family's declaration (ganpaint/models/family.py);
`build_nets` and `example_inputs` build and feed any family's nets from the model config.
"""

from __future__ import annotations

from ganpaint.models.family import Family, Nets, PhasePlan, StepKind
from ganpaint.models.registry import build_nets, example_inputs, get, register

__all__ = [
    "Family",
    "Nets",
    "PhasePlan",
    "StepKind",
    "build_nets",
    "example_inputs",
    "get",
    "register",
]
