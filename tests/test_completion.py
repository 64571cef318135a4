"""The smooth fills (pyramid / push-pull, harmonic, biharmonic, tension): known pixels exact, holes
smooth."""

from __future__ import annotations

import pytest
import torch

from ganpaint.completion import (
    HoleFill,
    biharmonic_fill,
    biharmonic_iterations,
    harmonic_fill,
    harmonic_sweeps,
    pyramid_fill,
    tension_fill,
)
from ganpaint.eval.metrics import psnr


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


def _smooth_images(count: int, side: int, seed: int = 0) -> torch.Tensor:
    """Random low-frequency colour fields (bilinearly upsampled noise) in [0, 1]."""
    coarse = torch.rand(count, 3, 5, 5, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic").clamp(0, 1)


def test_harmonic_fill_keeps_known_pixels_and_recovers_a_plane_exactly():
    # A linear function is harmonic: the Laplace fill of a plane is the plane itself.
    rows = torch.linspace(0, 1, 48).view(1, 1, 48, 1)
    columns = torch.linspace(0, 1, 48).view(1, 1, 1, 48)
    plane = (0.2 + 0.5 * rows + 0.3 * columns).expand(2, 3, 48, 48).contiguous()
    hole_mask = _hole(2, 48, 10, 14, 20)
    filled = harmonic_fill(plane, hole_mask, sweeps=400)
    assert torch.equal(filled * (1 - hole_mask), plane * (1 - hole_mask))
    assert (filled - plane).abs().max() < 2e-3
    # the pyramid fill averages the slope into blocks: far from exact on the same plane
    assert (pyramid_fill(plane, hole_mask) - plane).abs().max() > 10 * 2e-3


@pytest.mark.parametrize(
    ("fill", "default_count", "expected_count", "solved", "seed", "hole"),
    [
        (harmonic_fill, harmonic_sweeps, 16, {"sweeps": 1000}, 0, (18, 22, 26)),
        (biharmonic_fill, biharmonic_iterations, 292, {"iterations": 1500}, 2, (17, 19, 28)),
    ],
    ids=["harmonic", "biharmonic"],
)
def test_default_iterations_come_within_a_few_hundredths_of_a_db_of_the_solved_fill(
    fill, default_count, expected_count, solved, seed, hole
):
    images = _smooth_images(8, 64, seed=seed)
    hole_mask = _hole(8, 64, *hole)
    default = psnr(fill(images, hole_mask), images, hole_mask).mean()
    converged = psnr(fill(images, hole_mask, **solved), images, hole_mask).mean()
    assert default_count(64) == expected_count
    assert abs(float(converged - default)) < 0.05


def test_harmonic_fill_beats_the_pyramid_fill_on_smooth_images():
    images = _smooth_images(16, 64, seed=1)
    hole_mask = _hole(16, 64, 16, 16, 28)
    harmonic = psnr(harmonic_fill(images, hole_mask), images, hole_mask).mean()
    pyramid = psnr(pyramid_fill(images, hole_mask), images, hole_mask).mean()
    assert harmonic > pyramid + 1.0


def test_hole_fill_kinds():
    images, hole_mask = _smooth_images(2, 32), _hole(2, 32, 8, 8, 12)
    colour = torch.tensor([0.1, 0.2, 0.3])
    inside = hole_mask.bool().expand_as(images)
    assert torch.allclose(
        HoleFill("mean", colour)(images, hole_mask)[:, 0][inside[:, 0]], torch.tensor(0.1)
    )
    assert HoleFill("zero", torch.zeros(3))(images, hole_mask)[inside].abs().max() == 0
    assert torch.equal(
        HoleFill("pyramid", colour)(images, hole_mask), pyramid_fill(images, hole_mask)
    )
    assert torch.equal(
        HoleFill("harmonic", colour)(images, hole_mask), harmonic_fill(images, hole_mask)
    )
    assert torch.equal(
        HoleFill("biharmonic", colour, iterations=7)(images, hole_mask),
        biharmonic_fill(images, hole_mask, iterations=7),
    )
    assert torch.equal(
        HoleFill("harmonic", colour, iterations=3)(images, hole_mask),
        harmonic_fill(images, hole_mask, sweeps=3),
    )
    assert torch.equal(
        HoleFill("tension", colour, iterations=9, tension=0.4)(images, hole_mask),
        tension_fill(images, hole_mask, 0.4, iterations=9),
    )


def _bowl(count: int, side: int) -> torch.Tensor:
    """A quadratic surface with a cross term: its Laplacian is constant, so it is biharmonic but
    not harmonic."""
    axis = torch.linspace(-1, 1, side)
    rows, columns = axis.view(1, 1, side, 1), axis.view(1, 1, 1, side)
    bowl = 0.3 + 0.2 * rows**2 + 0.15 * columns**2 + 0.1 * rows * columns + 0.1 * columns
    return bowl.expand(count, 3, side, side).contiguous()


def test_biharmonic_fill_recovers_a_quadratic_surface_the_harmonic_fill_flattens():
    bowl = _bowl(2, 40)
    hole_mask = _hole(2, 40, 12, 10, 16)  # >= 3 px from the image edge: no edge effects
    filled = biharmonic_fill(bowl, hole_mask)
    assert torch.equal(filled * (1 - hole_mask), bowl * (1 - hole_mask))
    assert (filled - bowl).abs().max() < 1e-3
    assert (harmonic_fill(bowl, hole_mask, sweeps=400) - bowl).abs().max() > 10 * 1e-3


def test_biharmonic_fill_beats_the_harmonic_fill_on_smooth_images_and_leaves_holeless_ones():
    images = _smooth_images(16, 64, seed=3)
    hole_mask = _hole(16, 64, 16, 16, 28)
    hole_mask[0] = 0  # an image without a hole comes back as it is
    biharmonic = biharmonic_fill(images, hole_mask)
    assert torch.equal(biharmonic[0], images[0])
    scores = psnr(biharmonic[1:], images[1:], hole_mask[1:]).mean()
    assert scores > psnr(harmonic_fill(images, hole_mask)[1:], images[1:], hole_mask[1:]).mean() + 1


def _energy(filled: torch.Tensor, tension: float) -> torch.Tensor:
    """The tension fill's objective: (1 - t) x squared Laplacian + t x squared gradient, per image."""
    neighbours = torch.nn.functional.pad(filled, (1, 1, 1, 1), mode="replicate")
    laplacian = (
        neighbours[..., :-2, 1:-1]
        + neighbours[..., 2:, 1:-1]
        + neighbours[..., 1:-1, :-2]
        + neighbours[..., 1:-1, 2:]
        - 4 * filled
    )
    gradient = filled.diff(dim=-1).square().sum((-2, -1)) + filled.diff(dim=-2).square().sum(
        (-2, -1)
    )
    return ((1 - tension) * laplacian.square().sum((-2, -1)) + tension * gradient).sum(-1)


@pytest.mark.parametrize("tension", [0.05, 0.2, 0.6])
def test_tension_fill_minimises_its_energy_between_the_membrane_and_the_thin_plate(tension):
    """The solve is a minimum: no other fill of the hole, the harmonic and biharmonic ones and
    random nudges of the solution included, has lower energy; known pixels are kept exactly."""
    images = _smooth_images(4, 32, seed=5) + 0.05 * torch.rand(4, 3, 32, 32)  # some texture
    hole_mask = _hole(4, 32, 9, 7, 13)
    filled = tension_fill(images, hole_mask, tension, iterations=400)
    assert torch.equal(filled * (1 - hole_mask), images * (1 - hole_mask))
    best = _energy(filled, tension)
    others = [harmonic_fill(images, hole_mask, sweeps=400), biharmonic_fill(images, hole_mask)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        others.append(filled + 1e-2 * hole_mask * torch.randn(filled.shape, generator=generator))
    for other in others:
        assert (_energy(other, tension) > best * (1 + 1e-4)).all()


def test_tension_fill_ends_are_the_biharmonic_and_the_harmonic_fill():
    images = _smooth_images(3, 32, seed=6)
    hole_mask = _hole(3, 32, 8, 10, 14)
    assert torch.equal(tension_fill(images, hole_mask, 0.0), biharmonic_fill(images, hole_mask))
    membrane = tension_fill(images, hole_mask, 1.0, iterations=400)
    solved = harmonic_fill(images, hole_mask, sweeps=400)
    assert (membrane - solved).abs().max() < 1e-4
    with pytest.raises(ValueError, match="tension"):
        tension_fill(images, hole_mask, 1.2)
