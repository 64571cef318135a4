"""What a model family declares: its nets, how they are fed, its phases and its geometry rules.

A `Family` is data. The loop, the step functions, config validation, validation grids, export,
`eval`, `inpaint` and `models` read these fields instead of testing family names, so a new family
or variant is one module that builds its nets, one `Family(...)` entry in the registry
(ganpaint/models/registry.py) and a preset in configs/.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ganpaint.config import ModelConfig, TrainConfig


class StepKind(enum.Enum):
    """What one training step of a phase updates (ganpaint/train/steps.py has one function each)."""

    COMPLETION = "completion"  # the generator alone on the reconstruction loss (GLCIC phase 1)
    DISCRIMINATOR = "discriminator"  # the discriminator alone, generator frozen (GLCIC phase 2)
    ADVERSARIAL = "adversarial"  # D on real vs completed, then G on reconstruction + adversarial
    CRITIC = "critic"  # WGAN: critic_steps clamped critic updates, then G on L2 + critic score
    GENERATION = "generation"  # DCGAN: D on real vs generated from latents, then G


@dataclass(frozen=True)
class PhasePlan:
    """One training phase: its log name, its step kind, and the schedule key giving its length
    (None: it runs until schedule.total_steps)."""

    name: str
    kind: StepKind
    length_key: str | None = None


@dataclass
class Nets:
    generator: nn.Module
    discriminator: nn.Module


NetBuilder = Callable[["ModelConfig", int, int], Nets]
ConfigCheck = Callable[["TrainConfig"], None]


def no_rules(config: TrainConfig) -> None:
    """For families whose geometry needs no rule beyond the shared ones."""


@dataclass(frozen=True)
class Family:
    """A model family. `build(model, image_px, local_px)` returns both nets, freshly initialised.

    - inpaints: the generator takes (image_filled [N,3,H,W], hole_mask [N,1,H,W]); False: it
      generates from a latent z [N, latent_dim] (and there are no holes).
    - predicts_center: the generator returns only the centre square (local_px), which the caller
      pastes into the image; the hole is that square.
    - judges_whole_image: the discriminator takes (image, local_patch); else the local patch
      alone (inpainting) or the image alone (generation).
    - dilated: the generator has dilated rows whose rates model.dilations sets; other families
      refuse a non-default model.dilations.
    - captions: both nets also take the token ids of each image's caption, tokens [N, T] int64
      (the generator after hole_mask, the discriminator last); the data stream yields them
      (data.captions) and `ganpaint inpaint --caption` encodes the user's text.
    - phases: in training order; `check(config)` raises ConfigError for geometry the nets cannot
      take (the shared rules, hole <= local area <= image, are applied to every inpainting family).
    """

    name: str
    summary: str
    build: NetBuilder
    phases: tuple[PhasePlan, ...]
    inpaints: bool = True
    predicts_center: bool = False
    judges_whole_image: bool = False
    captions: bool = False
    dilated: bool = False
    check: ConfigCheck = no_rules

    def judge_inputs(
        self,
        images: torch.Tensor,
        local_patch: torch.Tensor | None,
        tokens: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """What the discriminator is called with, for images, their local patches (and captions)."""
        captions = (tokens,) if self.captions else ()
        if not self.inpaints:
            return (images, *captions)
        if self.judges_whole_image:
            return (images, local_patch, *captions)
        return (local_patch, *captions)
