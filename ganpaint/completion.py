"""Filling holes and compositing: the one place that turns (image, hole_mask) into a completed image.

The training loop, evaluation and `ganpaint inpaint` all go through `complete`, so the hole fill and
the centre-patch pasting of Context Encoders / WGAN U-Net are the same everywhere. A net's input
fill (`model.hole_fill`, a `HoleFill`) is a constant colour (mean, zero: the papers) or a smooth
fill from the pixels around the hole (pyramid, harmonic, biharmonic, tension); the smooth fills
double as classical baselines in evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ganpaint.config import ModelConfig


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


# Red-black successive over-relaxation factor of the harmonic fill: near the optimum
# 2 / (1 + sin(pi / n)) for holes of n = 20-40 px; any value in (1, 2) converges.
OVERRELAXATION = 1.85


def _neighbour_mean(images: torch.Tensor) -> torch.Tensor:
    """Mean of each pixel's four neighbours; the border repeats itself (no flux across the edge)."""
    padded = nn.functional.pad(images, (1, 1, 1, 1), mode="replicate")
    up, down = padded[..., :-2, 1:-1], padded[..., 2:, 1:-1]
    left, right = padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]
    return (up + down + left + right) / 4


def harmonic_sweeps(side: int) -> int:
    """Relaxation sweeps of the harmonic fill for images of this side (px).

    The pyramid start is right at coarse scales, so the sweeps only settle finer ones: at 64 px
    16 sweeps come within 0.02 dB hole PSNR of the converged fill (tests/test_completion.py).
    Capped at 64 so that large images stay affordable: what the cap leaves unsettled in holes
    much wider than ~100 px is the pyramid's smooth start.
    """
    return min(64, max(8, side // 4))


@functools.lru_cache(maxsize=16)
def _checkerboard(
    height: int, width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """1 on the "red" pixels (row + column even), 0 on the black; made once per shape and device
    (the training step fills every batch at the same size)."""
    rows = torch.arange(height, device=device).view(-1, 1)
    columns = torch.arange(width, device=device).view(1, -1)
    return ((rows + columns) % 2 == 0).to(dtype)


def harmonic_fill(
    images: torch.Tensor, hole_mask: torch.Tensor, sweeps: int | None = None
) -> torch.Tensor:
    """Laplace (membrane) fill: the smoothest surface through the colours around the hole.

    Each hole pixel becomes the mean of its four neighbours, the known pixels being the boundary
    condition. Solved from the pyramid fill by red-black over-relaxation (`sweeps`, default
    `harmonic_sweeps`): a few elementwise device ops per sweep, no host sync. It carries the
    gradients across the hole that push-pull averages into blocks.

    images [N,3,H,W] in [0,1]; hole_mask [N,1,H,W], 1 = hole. Known pixels come back exactly.
    """
    filled = pyramid_fill(images, hole_mask)
    hole = OVERRELAXATION * hole_mask.to(filled.dtype)
    red = _checkerboard(*filled.shape[-2:], filled.device, filled.dtype)
    # Red pixels' neighbours are all black and vice versa: each half-sweep is a Gauss-Seidel step.
    half_sweeps = (hole * red, hole * (1 - red))
    for _ in range(harmonic_sweeps(min(filled.shape[-2:])) if sweeps is None else sweeps):
        for weight in half_sweeps:
            filled = filled + weight * (_neighbour_mean(filled) - filled)
    return filled


def _laplacian(images: torch.Tensor) -> torch.Tensor:
    """The 5-point Laplacian with no flux across the image edge: symmetric, so its square is too."""
    return 4 * (_neighbour_mean(images) - images)


def biharmonic_iterations(side: int) -> int:
    """Conjugate-gradient iterations of the biharmonic and tension fills for images of this side.

    CG needs on the order of the hole's width squared to settle the smoothest error: at 64 px
    (holes up to ~30 px) 292 come within a few hundredths of a dB hole PSNR of the solved fill
    (tests/test_completion.py; tension converges faster). Capped at 600: larger holes keep some
    of the harmonic start.
    """
    return min(600, max(50, side * side // 14))


# The tension fill's default tension: of 0.02-0.7, 0.2-0.3 scored best on held-out photo tiles
# (+0.3 dB over the harmonic and +0.5 over the biharmonic fill), and 0.2 stays within 0.1 dB of
# the biharmonic fill on smooth synthetic faces, where 0.3 falls 0.3 dB behind (README).
TENSION = 0.2


def tension_fill(
    images: torch.Tensor,
    hole_mask: torch.Tensor,
    tension: float = TENSION,
    iterations: int | None = None,
) -> torch.Tensor:
    """Spline in tension (Smith & Wessel 1990; GMT's `surface -T`): the hole minimises
    (1 - tension) x the summed squared Laplacian (bending) + tension x the summed squared gradient
    (stretching), the known pixels fixed. Tension 0 is the biharmonic (thin-plate) fill: it
    carries the border's colours and gradients into the hole, and overshoots where the gradients
    are texture. Tension 1 is the harmonic (membrane) fill: colours only, flat where a ramp
    bends. Between, the gradients carry in and die out.

    Solved from the harmonic fill by conjugate gradients on M A (M x + (1 - M) known) = 0, with
    A = (1 - tension) L L - tension L (L the 5-point Laplacian, symmetric; M the hole), one
    system per image and channel, batched, `iterations` (default `biharmonic_iterations`) of a
    few elementwise ops and two reductions each, no host sync. Not clamped: it may overshoot
    [0, 1]; compositing and the metrics clamp.

    images [N,3,H,W] in [0,1]; hole_mask [N,1,H,W], 1 = hole. Known pixels come back exactly.
    """
    if not 0 <= tension <= 1:
        raise ValueError(f"tension must lie in [0, 1], got {tension}")

    def energy_gradient(x: torch.Tensor) -> torch.Tensor:  # A x = L ((1 - tension) L x - tension x)
        return _laplacian((1 - tension) * _laplacian(x) - tension * x)

    hole = hole_mask.to(images.dtype)
    filled = harmonic_fill(images, hole_mask)
    residual = -hole * energy_gradient(filled)
    direction = residual
    squared = residual.square().sum((-2, -1), keepdim=True)
    for _ in range(
        biharmonic_iterations(min(images.shape[-2:])) if iterations is None else iterations
    ):
        product = hole * energy_gradient(direction)
        # tiny clamps: an image without a hole has zero residual and stays as it is
        step = squared / (direction * product).sum((-2, -1), keepdim=True).clamp_min(1e-30)
        filled = filled + step * direction
        residual = residual - step * product
        new_squared = residual.square().sum((-2, -1), keepdim=True)
        direction = residual + new_squared / squared.clamp_min(1e-30) * direction
        squared = new_squared
    return filled


def biharmonic_fill(
    images: torch.Tensor, hole_mask: torch.Tensor, iterations: int | None = None
) -> torch.Tensor:
    """Thin-plate fill: the hole minimises the summed squared Laplacian (bending energy), the
    known pixels fixed; `tension_fill` at tension 0 (same solver, same `iterations`)."""
    return tension_fill(images, hole_mask, 0.0, iterations)


@dataclass(frozen=True)
class HoleFill:
    """What a net's input holds in the hole (`model.hole_fill`).

    kind: mean | zero (the constant `rgb`, the papers' input), pyramid | harmonic | biharmonic |
    tension (smooth fills from the pixels around the hole; with `model.residual` the net adds a
    correction to them).
    Called as fill(images [N,3,H,W], hole_mask [N,1,H,W]) -> filled images, outside autograd.
    """

    kind: str
    rgb: torch.Tensor  # [3] in [0, 1]: the constant fill's colour
    iterations: int = 0  # the smooth fills' solver iterations (`model.fill_iterations`); 0: default
    tension: float = TENSION  # the tension fill's (`model.fill_tension`)

    def __call__(self, images: torch.Tensor, hole_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # a function of the data alone: nothing to differentiate
            if self.kind == "pyramid":
                return pyramid_fill(images, hole_mask)
            iterations = self.iterations or None
            if self.kind == "harmonic":
                return harmonic_fill(images, hole_mask, iterations)
            if self.kind == "biharmonic":
                return biharmonic_fill(images, hole_mask, iterations)
            if self.kind == "tension":
                return tension_fill(images, hole_mask, self.tension, iterations)
            return fill_holes(images, hole_mask, self.rgb)

    @classmethod
    def of(cls, model: ModelConfig, rgb: torch.Tensor) -> HoleFill:
        """The fill a config's `model` section asks for (`hole_fill`, `fill_iterations`,
        `fill_tension`)."""
        return cls(model.hole_fill, rgb, model.fill_iterations, model.fill_tension)

    def to(self, device: torch.device | str) -> HoleFill:
        return dataclasses.replace(self, rgb=self.rgb.to(device))


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
    hole_fill: HoleFill,
    predicts_center: bool,
    tokens: torch.Tensor | None = None,
    filled: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run an inpainting generator on the `hole_fill`ed images and composite its output.

    Returns (prediction, completed), both [N,3,H,W] in [0,1]: `prediction` is the net's raw output
    (for centre-predicting nets, as their family declares, pasted into the filled input),
    `completed` keeps the known pixels of `images` and takes the prediction inside the hole only.
    `tokens` [N, T]: the captions of caption-conditioned generators (passed after hole_mask).
    `filled`: hole_fill(images, hole_mask) when the caller has it already (it is not recomputed).
    """
    if filled is None:
        filled = hole_fill(images, hole_mask)
    captions = () if tokens is None else (tokens,)
    output = generator(filled, hole_mask, *captions)
    prediction = paste_center(filled, output) if predicts_center else output
    completed = images * (1 - hole_mask) + prediction * hole_mask
    return prediction, completed
