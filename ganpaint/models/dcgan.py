"""DCGAN (Radford et al. 2016): the 64 px face generator; its discriminator is `StridedDiscriminator`."""

from __future__ import annotations

import torch
from torch import nn

from ganpaint.models.layers import Row, init_weights, make_layers

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
