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


def pyramid_fill(images: torch.Tensor, hole_mask: torch.Tensor) -> torch.Tensor:
    """Push-pull fill: the hole takes a smooth interpolation of the known pixels around it.

    Push: average the known pixels down a mip pyramid (2x2 cells, weighted by how much of each
    cell is known) until nothing is unknown or one pixel is left. Pull: from the coarsest level
    back up, each level keeps its own average where its cells are known and takes the coarser
    level's (bilinearly upsampled) value in proportion to what is missing. Known pixels come back
    exactly. Batched and device-side: a few pooling calls, no host sync, so it costs next to
    nothing as a net's pre-fill on a GPU; it is also the strongest cheap baseline in evaluation.

    images [N,3,H,W] in [0,1]; hole_mask [N,1,H,W], 1 = hole. Returns [N,3,H,W]. An image with no
    known pixel at all is filled with mid-grey.
    """
    known = 1 - hole_mask.to(images.dtype)
    colour_sums, known_sums = [images * known], [known]
    while min(colour_sums[-1].shape[-2:]) > 1:
        colour_sums.append(nn.functional.avg_pool2d(colour_sums[-1], 2, ceil_mode=True))
        known_sums.append(nn.functional.avg_pool2d(known_sums[-1], 2, ceil_mode=True))
    coarsest_known = known_sums[-1].clamp_min(1e-8)
    filled = torch.where(known_sums[-1] > 0, colour_sums[-1] / coarsest_known, 0.5)
    for colour_sum, known_sum in zip(
        reversed(colour_sums[:-1]), reversed(known_sums[:-1]), strict=True
    ):
        coarser = nn.functional.interpolate(
            filled, size=colour_sum.shape[-2:], mode="bilinear", align_corners=False
        )
        # known_sum is the fraction of the cell that is known: average where known, pull the rest
        average = colour_sum / known_sum.clamp_min(1e-8)
        filled = known_sum * average + (1 - known_sum) * coarser
    return images * known + filled * (1 - known)


def paste_center(images: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
    """Put a [N,3,P,P] patch into the centre of [N,3,H,W] images (out of place, differentiable)."""
    height, width = images.shape[-2:]
    side = patch.shape[-1]
    top, left = (height - side) // 2, (width - side) // 2
    pad = (left, width - left - side, top, height - top - side)
    inside = nn.functional.pad(torch.ones_like(patch[:, :1]), pad)
    return images * (1 - inside) + nn.functional.pad(patch, pad)


def complete(
    generator: nn.Module,
    images: torch.Tensor,
    hole_mask: torch.Tensor,
    fill_rgb: torch.Tensor,
    predicts_center: bool,
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an inpainting generator and composite its output into the known pixels.

    Returns (prediction, completed), both [N,3,H,W] in [0,1]: `prediction` is the net's raw output
    (for centre-predicting nets, as their family declares, pasted into the filled input),
    `completed` keeps the known pixels of `images` and takes the prediction inside the hole only.
    `tokens` [N, T]: the captions of caption-conditioned generators (passed after hole_mask).
    """
    filled = fill_holes(images, hole_mask, fill_rgb)
    captions = () if tokens is None else (tokens,)
    output = generator(filled, hole_mask, *captions)
    prediction = paste_center(filled, output) if predicts_center else output
    completed = images * (1 - hole_mask) + prediction * hole_mask
    return prediction, completed
