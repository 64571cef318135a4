"""What a model family declares: its nets, its own settings, how they are fed, its phases and rules.

A `Family` is data, declared beside its nets (`FAMILY = Family(...)` at the end of
ganpaint/models/glcic.py) and listed in ganpaint/models/registry.py. The loop, the step functions,
config validation, validation grids, export, `eval`, `inpaint` and `models` read these fields
instead of testing family names, so a new family or variant is one module (its nets, its settings,
its `Family`) and a preset in configs/.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ganpaint.errors import ConfigError

if TYPE_CHECKING:
    from ganpaint.config import ModelConfig, ScheduleConfig, TrainConfig


class StepKind(enum.Enum):
    """What one training step of a phase updates (ganpaint/training/steps.py has one function each)."""

    COMPLETION = "completion"  # the generator alone on the reconstruction loss (GLCIC phase 1)
    DISCRIMINATOR = "discriminator"  # the discriminator alone, generator frozen (GLCIC phase 2)
    ADVERSARIAL = "adversarial"  # D on real vs completed, then G on reconstruction + adversarial
    # WGAN: critic_steps clamped critic updates, then G on L2 + critic score; a family with these
    # phases declares schedule.critic_steps (wgan_unet.CriticSettings)
    CRITIC = "critic"
    GENERATION = "generation"  # DCGAN: D on real vs generated from latents, then G


@dataclass(frozen=True)
class PhasePlan:
    """One training phase: its log name, its step kind, and its length in steps, read from the
    run's schedule (`lambda schedule: schedule.completion_steps`; None: it runs until
    schedule.total_steps)."""

    name: str
    kind: StepKind
    length: Callable[[ScheduleConfig], int] | None = None


@dataclass
class Nets:
    generator: nn.Module
    discriminator: nn.Module


NetBuilder = Callable[["ModelConfig", int, int], Nets]
ConfigCheck = Callable[["TrainConfig"], None]


def no_rules(config: TrainConfig) -> None:
    """For families whose geometry needs no rule beyond the shared ones."""


def require_positive(key: str, value: int) -> None:
    """ConfigError naming `key` unless `value` > 0 (a family's own sizes and counts)."""
    if value <= 0:
        raise ConfigError(f"config key {key!r}: must be > 0, got {value}")


@dataclass(frozen=True)
class Family:
    """A model family. `build(model, image_px, local_px)` returns both nets, freshly initialised;
    `model` is the config's model section, the shared keys plus the family's `model_settings`.

    - model_settings, schedule_settings: frozen dataclasses of the keys the family adds to the
      config's model and schedule sections (GLCIC's model.fc_features), each with its default;
      presets and overrides set them as any key, a config of another family refuses them.
    - inpaints: the generator takes (image_filled [N,3,H,W], hole_mask [N,1,H,W]); False: it
      generates from a latent z [N, model.latent_dim] (and there are no holes).
    - predicts_center: the generator returns only the centre square (local_px), which the caller
      pastes into the image; the hole is that square (less a band of loss.overlap_px).
    - judges_whole_image: the discriminator takes (image, local_patch); else the local patch
      alone (inpainting) or the image alone (generation).
    - captions: both nets also take the token ids of each image's caption, tokens [N, T] int64
      (the generator after hole_mask, the discriminator last), from an embedding of
      model.vocabulary_size rows; the data stream yields them (data.captions) and
      `ganpaint inpaint --caption` encodes the user's text.
    - size_multiple: a fully convolutional generator's input sides must be a multiple of this
      (its overall stride): inference pads photo windows to it.
    - phases: in training order; `check(config)` raises ConfigError for settings or geometry the
      nets cannot take, after the rules `validate` applies to every family of its kind.
    """

    name: str
    summary: str
    build: NetBuilder
    phases: tuple[PhasePlan, ...]
    model_settings: type | None = None
    schedule_settings: type | None = None
    inpaints: bool = True
    predicts_center: bool = False
    judges_whole_image: bool = False
    captions: bool = False
    size_multiple: int = 1
    check: ConfigCheck = no_rules

    def settings(self) -> dict[str, type]:
        """Its own settings by config section, as ganpaint.config.register_family takes them."""
        sections = {"model": self.model_settings, "schedule": self.schedule_settings}
        return {section: kind for section, kind in sections.items() if kind is not None}

    def validate(self, config: TrainConfig) -> None:
        """The rules for its kind of family (data, geometry, phase lengths), then its own `check`;
        ConfigError (one line, naming the key) for the first that fails."""
        if config.data.captions != self.captions:
            need = (
                "is conditioned on captions: set" if self.captions else "takes no captions: unset"
            )
            raise ConfigError(f"config key 'data.captions': {self.name} {need} data.captions")
        if not self.inpaints and config.schedule.reconstruction_only:
            raise ConfigError(
                f"config key 'schedule.reconstruction_only': {self.name} has no reconstruction loss"
            )
        if not self.inpaints and config.model.residual:
            raise ConfigError(f"config key 'model.residual': {self.name} fills no holes to correct")
        if self.inpaints:
            self._check_holes(config)
        self._check_phase_lengths(config)
        if self.predicts_center:
            self._check_centre(config)
        self.check(config)

    def _check_holes(self, config: TrainConfig) -> None:
        """hole <= local area <= image."""
        masks, image_px = config.masks, config.data.image_px
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

    def _check_phase_lengths(self, config: TrainConfig) -> None:
        """The phases of fixed length fit in schedule.total_steps."""
        schedule = config.schedule
        fixed = [(plan.name, plan.length(schedule)) for plan in self.phases if plan.length]
        steps = sum(length for _, length in fixed)
        if steps > schedule.total_steps:
            lengths = " + ".join(f"{name} {length}" for name, length in fixed)
            raise ConfigError(
                f"config key 'schedule.total_steps': must be >= the {steps} steps of {self.name}'s "
                f"fixed-length phases ({lengths}), got {schedule.total_steps}"
            )

    def _check_centre(self, config: TrainConfig) -> None:
        """Centre-square predictors: the net predicts the centre half of the image (local_px); the
        hole is that square, or that square less a band of loss.overlap_px (Context Encoders)."""
        masks, image_px, overlap_px = config.masks, config.data.image_px, config.loss.overlap_px
        if masks.kind != "center":
            raise ConfigError(
                f"config key 'masks.kind': {self.name} predicts the centre; use 'center'"
            )
        if masks.local_px * 2 != image_px or masks.hole_max_px != masks.local_px - 2 * overlap_px:
            raise ConfigError(
                f"config key 'masks.local_px': {self.name} needs local_px = image_px / 2 = "
                f"hole_max_px + 2 * loss.overlap_px, got local_px={masks.local_px}, "
                f"image_px={image_px}, hole_max_px={masks.hole_max_px}, overlap_px={overlap_px}"
            )

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
