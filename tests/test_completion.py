"""The pyramid (push-pull) fill: known pixels exact, holes smooth, beats the mean colour."""

from __future__ import annotations

import torch

from ganpaint.completion import pyramid_fill


def _hole(count: int, side: int, top: int, left: int, size: int) -> torch.Tensor:
    hole_mask = torch.zeros(count, 1, side, side)
    hole_mask[..., top : top + size, left : left + size] = 1
    return hole_mask


def test_known_pixels_are_kept_exactly():
    images = torch.rand(3, 3, 37, 29)  # odd sizes exercise the ceil-mode pyramid
    hole_mask = torch.zeros(3, 1, 37, 29)
    hole_mask[:, :, 5:20, 3:17] = 1
    filled = pyramid_fill(images, hole_mask)
    assert filled.shape == images.shape
    assert torch.equal(filled * (1 - hole_mask), images * (1 - hole_mask))


def test_linear_ramp_is_recovered_closely():
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(2, 3, 64, 64).contiguous()
    hole_mask = _hole(2, 64, 20, 20, 24)
    filled = pyramid_fill(ramp, hole_mask)
    hole_error = ((filled - ramp).abs() * hole_mask).sum() / (hole_mask.sum() * 3)
    mean_error = ((0.5 - ramp).abs() * hole_mask).sum() / (hole_mask.sum() * 3)
    assert hole_error < 0.05 < mean_error


def test_constant_image_is_filled_with_its_colour_and_empty_image_with_grey():
    colour = torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1)
    images = colour.expand(1, 3, 16, 16).contiguous()
    filled = pyramid_fill(images, _hole(1, 16, 4, 4, 8))
    assert torch.allclose(filled, images, atol=1e-6)
    everything = torch.ones(1, 1, 16, 16)
    assert torch.allclose(pyramid_fill(images, everything), torch.full_like(images, 0.5))
