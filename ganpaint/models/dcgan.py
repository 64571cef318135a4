"""DCGAN (Radford et al. 2016): the 64 px face generator; its discriminator is `StridedDiscriminator`.

The family (`FAMILY`, at the end) adds model.latent_dim to the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ganpaint.errors import ConfigError
from ganpaint.models.family import Family, Nets, PhasePlan, StepKind, require_positive
from ganpaint.models.layers import Row, StridedDiscriminator, init_weights, make_layers

if TYPE_CHECKING:
    from ganpaint.config import TrainConfig

# z (as a 1x1 map) -> 4x4x8w -> 8x8x4w -> 16x16x2w -> 32x32xw -> 64x64x3: 4x4 transposed convs,
# BN + ReLU on all but the output.
GENERATOR = [
    Row("deconv", 512, 4, padding=0),
    Row("deconv", 256, 4, stride=2),
    Row("deconv", 128, 4, stride=2),
    Row("deconv", 64, 4, stride=2),
    Row("deconv", 3, 4, stride=2, norm=False, activation=None, scale=False),
]


class DCGANGenerator(nn.Module):
    """forward(z [N, latent_dim]) -> image [N, 3, 64, 64] in [0, 1].

    The output is the paper's tanh rescaled to [0, 1] as (tanh + 1) / 2, ganpaint's image range.
    """

    def __init__(self, latent_dim: int = 100, width: int = 64) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.layers = make_layers(GENERATOR, latent_dim, width)
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.layers(z[:, :, None, None])) + 1) / 2


@dataclass(frozen=True)
class DCGANSettings:
    """DCGAN's own model key."""

    latent_dim: int = 100  # the size of z (paper: 100)


def check(config: TrainConfig) -> None:
    """The tables generate 64 px images from a z of at least one value."""
    if config.data.image_px != 64:
        raise ConfigError(
            f"config key 'data.image_px': dcgan generates 64 px images, got {config.data.image_px}"
        )
    require_positive("model.latent_dim", config.model.latent_dim)


FAMILY = Family(
    name="dcgan",
    summary="Radford et al.: 64 px face generation from z",
    build=lambda model, image_px, local_px: Nets(
        DCGANGenerator(model.latent_dim, model.width), StridedDiscriminator(64, model.disc_width)
    ),
    phases=(PhasePlan("joint", StepKind.GENERATION),),
    model_settings=DCGANSettings,
    inpaints=False,
    check=check,
)
