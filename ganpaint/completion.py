"""Filling holes and compositing: the one place that turns (image, hole_mask) into a completed image.

The training loop, evaluation and `ganpaint inpaint` all go through `complete`, so the hole fill and
the centre-patch pasting of Context Encoders / WGAN U-Net are the same everywhere.
"""

from __future__ import annotations

import torch
from torch import nn


def fill_holes(
    images: torch.Tensor, hole_mask: torch.Tensor, fill_rgb: torch.Tensor
) -> torch.Tensor:
    """Replace the hole by a constant colour (GLCIC: the training set's mean).

    images [N,3,H,W] in [0,1]; hole_mask [N,1,H,W], 1 = hole; fill_rgb [3] in [0,1].
    """
    fill = fill_rgb.to(images).view(1, 3, 1, 1)
    return images * (1 - hole_mask) + fill * hole_mask


def paste_center(images: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Put a [N,3,P,P] patch into the centre of [N,3,H,W] images (out of place, differentiable)."""
    height, width = images.shape[-2:]
    side = patch.shape[-1]
    top, left = (height - side) // 2, (width - side) // 2
    pad = (left, width - left - side, top, height - top - side)
    inside = nn.functional.pad(torch.ones_like(patch[:, :1]), pad)
    return images * (1 - inside) + nn.functional.pad(patch, pad)


def complete(
    generator: nn.Module, images: torch.Tensor, hole_mask: torch.Tensor, fill_rgb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an inpainting generator and composite its output into the known pixels.

    Returns (prediction, completed), both [N,3,H,W] in [0,1]: `prediction` is the net's raw output
    (for centre-predicting nets, pasted into the filled input), `completed` keeps the known pixels
    of `images` and takes the prediction inside the hole only.
    """
    filled = fill_holes(images, hole_mask, fill_rgb)
    output = generator(filled, hole_mask)
    prediction = paste_center(filled, output) if output.shape[-1] != images.shape[-1] else output
    completed = images * (1 - hole_mask) + prediction * hole_mask
    return prediction, completed
