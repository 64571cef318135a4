"""Residual generators (`model.residual`): the net corrects its smoothly filled input.

A GLCIC-style net paints the whole hole from a constant fill and must first learn what the
pixels around the hole already say. Given a smooth fill of the hole instead (`model.hole_fill`:
pyramid or harmonic) it only has to add what the fill misses. `ResidualGenerator` wraps any
inpainting generator whose output lies in [0, 1] through a sigmoid or a mapped tanh: the output is
read as a signed correction around 0.5,

    completion = clamp(filled + 2 * (net(filled, ...) - 0.5), 0, 1)

(for centre-predicting nets, `filled` is the input's centre), and the net's last convolution
starts at zero, so the untrained model is exactly its input fill and training moves away from it
only where the loss says so.
"""

from __future__ import annotations

import torch
from torch import nn


def center_crop(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre height x width window of [N, C, H, W] features."""
    top, left = (features.shape[-2] - height) // 2, (features.shape[-1] - width) // 2
    return features[..., top : top + height, left : left + width]


@torch.no_grad()
def zero_last_conv(module: nn.Module) -> None:
    """Zero the weights and bias of the last convolution registered in `module` (its output
    layer in every ganpaint generator: tests/test_recipe.py checks each family)."""
    convs = [
        layer for layer in module.modules() if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    nn.init.zeros_(convs[-1].weight)
    if convs[-1].bias is not None:
        nn.init.zeros_(convs[-1].bias)


class ResidualGenerator(nn.Module):
    """forward(image_filled, hole_mask, *conditions) -> the wrapped net's output, as a correction
    of `image_filled` (or of its centre, when the net predicts a smaller centre patch)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        zero_last_conv(net)

    def forward(
        self, image_filled: torch.Tensor, hole_mask: torch.Tensor, *conditions: torch.Tensor
    ) -> torch.Tensor:
        output = self.net(image_filled, hole_mask, *conditions)
        base = center_crop(image_filled, *output.shape[-2:]).to(output.dtype)
        return (base + 2 * (output - 0.5)).clamp(0, 1)
