"""Holes and local areas: geometry of every kind, seeding, and the per-sample local crop."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from ganpaint.config import MaskConfig
from ganpaint.data.masks import (
    BRUSH_PRESETS,
    _draw_segments,
    crop_local,
    hole_generator,
    make_holes,
)

IMAGE_PX = 64
RECT = MaskConfig(kind="rect", hole_min_px=8, hole_max_px=20, local_px=32)


def draw(masks: MaskConfig, batch: int = 64, seed: int = 0, rank: int = 0, step: int = 0):
    return make_holes(masks, batch, IMAGE_PX, hole_generator(seed, rank, step, "cpu"), "cpu")


def bounding_boxes(hole_mask: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each sample's hole pixels, by a plain loop."""
    boxes = []
    for mask in hole_mask[:, 0]:
        rows = mask.any(dim=1).nonzero().flatten()
        cols = mask.any(dim=0).nonzero().flatten()
        boxes.append(
            (
                int(rows[0]),
                int(cols[0]),
                len(range(rows[0], rows[-1] + 1)),
                len(range(cols[0], cols[-1] + 1)),
            )
        )
    return boxes


def test_rect_hole_inside_local_area_and_in_size_range():
    holes = draw(RECT)
    assert holes.hole_mask.shape == (64, 1, IMAGE_PX, IMAGE_PX)
    assert holes.hole_mask.dtype == torch.float32 and holes.local_origin.dtype == torch.long
    assert set(holes.hole_mask.unique().tolist()) == {0.0, 1.0}
    heights, widths = [], []
    for (top, left, height, width), origin, mask in zip(
        bounding_boxes(holes.hole_mask), holes.local_origin.tolist(), holes.hole_mask, strict=True
    ):
        assert 8 <= height <= 20 and 8 <= width <= 20
        assert mask.sum() == height * width  # a solid rectangle
        assert 0 <= origin[0] <= IMAGE_PX - 32 and 0 <= origin[1] <= IMAGE_PX - 32
        assert origin[0] <= top and top + height <= origin[0] + 32
        assert origin[1] <= left and left + width <= origin[1] + 32
        heights.append(height)
        widths.append(width)
    # sizes are drawn per sample over the whole range, and independently per axis
    assert min(heights) <= 10 and max(heights) >= 18 and heights != widths
    assert len(set(map(tuple, holes.local_origin.tolist()))) > 50


def centred_origins(hole_mask: torch.Tensor, local_px: int) -> list[list[int]]:
    """The paper's local area: centred on the hole's bounding box, clamped inside the image."""
    return [
        [
            min(max(start + (extent - local_px) // 2, 0), IMAGE_PX - local_px)
            for start, extent in ((top, height), (left, width))
        ]
        for top, left, height, width in bounding_boxes(hole_mask)
    ]


def test_rect_local_area_centred_on_the_hole_and_clamped():
    """Default placement (GLCIC Sec. 3.2): the local area is centred on the hole; holes lie
    anywhere in the image, so some areas are clamped at each border."""
    assert RECT.local_placement == "centred"
    holes = draw(RECT, batch=256)
    origins = holes.local_origin.tolist()
    assert origins == centred_origins(holes.hole_mask, 32)
    flat = [value for origin in origins for value in origin]
    assert 0 in flat and IMAGE_PX - 32 in flat  # clamped at both borders
    unclamped = [
        (top + height / 2) - (origin[0] + 16)
        for (top, _, height, _), origin in zip(
            bounding_boxes(holes.hole_mask), origins, strict=True
        )
        if 0 < origin[0] < IMAGE_PX - 32
    ]
    assert unclamped and max(abs(offset) for offset in unclamped) <= 0.5


def test_random_local_placement_is_kept_as_an_option():
    """local_placement=random: the area anywhere, the hole anywhere inside it (off-centre)."""
    holes = draw(replace(RECT, local_placement="random"), batch=256)
    offsets = []
    for (top, left, height, width), (row, column) in zip(
        bounding_boxes(holes.hole_mask), holes.local_origin.tolist(), strict=True
    ):
        assert row <= top and top + height <= row + 32
        assert column <= left and left + width <= column + 32
        offsets.append(abs(top + height / 2 - row - 16))
    assert sum(offsets) / len(offsets) > 3  # ~5 px on average for 8-20 px holes in 32 px areas


@pytest.mark.parametrize("placement", ["centred", "random"])
def test_brush_local_area_placement(placement):
    masks = MaskConfig(kind="brush", brush="thin", local_px=32, local_placement=placement)
    holes = draw(masks, batch=32)
    centred = holes.local_origin.tolist() == centred_origins(holes.hole_mask, 32)
    assert centred is (placement == "centred")


def test_center_hole():
    masks = MaskConfig(kind="center", hole_min_px=32, hole_max_px=32, local_px=32)
    holes = draw(masks, batch=3)
    expected = torch.zeros(IMAGE_PX, IMAGE_PX)
    expected[16:48, 16:48] = 1
    assert torch.equal(holes.hole_mask[:, 0], expected.expand(3, -1, -1))
    assert holes.local_origin.tolist() == [[16, 16]] * 3


def test_multi_rect():
    masks = MaskConfig(kind="multi_rect", hole_min_px=6, hole_max_px=10, local_px=16, max_holes=4)
    holes = draw(masks, batch=64)
    outside = []
    for mask, (top, left) in zip(holes.hole_mask[:, 0], holes.local_origin.tolist(), strict=True):
        local = mask[top : top + 16, left : left + 16]
        # the first hole (at least 6x6) lies inside the local area
        assert F.avg_pool2d(local[None, None], 6, stride=1).max() == 1
        outside.append(float(mask.sum() - local.sum()))
        assert mask.sum() <= 4 * 10 * 10
    # 1..4 holes per sample: only holes after the first can lie outside the local area
    assert any(count > 0 for count in outside)
    single = MaskConfig(kind="multi_rect", hole_min_px=6, hole_max_px=10, local_px=16, max_holes=1)
    rect = MaskConfig(kind="rect", hole_min_px=6, hole_max_px=10, local_px=16)
    assert torch.equal(draw(single).hole_mask, draw(rect).hole_mask)


@pytest.mark.parametrize("preset", ["thin", "medium", "thick"])
def test_brush_masks(preset):
    masks = MaskConfig(kind="brush", brush=preset, local_px=32, hole_max_px=32)
    holes = draw(masks, batch=16)
    assert set(holes.hole_mask.unique().tolist()) == {0.0, 1.0}
    coverage = holes.hole_mask.mean(dim=(1, 2, 3))
    assert (coverage > 0).all() and (coverage < 1).all()
    assert coverage.std() > 0  # stroke counts and shapes vary per sample
    assert ((0 <= holes.local_origin) & (holes.local_origin <= IMAGE_PX - 32)).all()


def test_brush_thick_covers_more_than_thin():
    coverage = {}
    for preset in ("thin", "thick"):
        masks = MaskConfig(kind="brush", brush=preset, local_px=32, hole_max_px=32)
        coverage[preset] = draw(masks, batch=32).hole_mask.mean()
    assert coverage["thick"] > coverage["thin"]


def test_brush_preset_values_follow_lama():
    assert BRUSH_PRESETS["thick"].max_width_px > BRUSH_PRESETS["medium"].max_width_px
    assert BRUSH_PRESETS["medium"].max_width_px > BRUSH_PRESETS["thin"].max_width_px


def test_draw_segments_matches_whole_image_distance():
    """The windowed rasteriser against the distance of every pixel centre to every segment."""
    generator = torch.Generator().manual_seed(1)
    batch, count, side = 3, 5, 40
    start = torch.rand(batch, count, 2, generator=generator) * side
    end = (start + torch.randn(batch, count, 2, generator=generator) * 6).clamp(0, side)
    radius = torch.rand(batch, count, generator=generator) * 3 + 0.75
    active = torch.rand(batch, count, generator=generator) > 0.3
    window = int((end - start).abs().max() + 2 * radius.max()) + 2
    drawn = torch.zeros(batch, side, side)
    _draw_segments(drawn, start, end, radius, active, window)

    expected = torch.zeros(batch, side, side, dtype=torch.bool)
    centers = torch.stack(
        torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij"), -1
    )
    for n in range(batch):
        for k in range(count):
            a, b = start[n, k], end[n, k]
            t = (((centers - a) @ (b - a)) / (b - a).pow(2).sum().clamp_min(1e-6)).clamp(0, 1)
            distance = (centers - a - t[..., None] * (b - a)).norm(dim=-1)
            expected[n] |= (distance <= radius[n, k]) & active[n, k]
    assert expected.any()
    assert torch.equal(drawn > 0, expected)


@pytest.mark.parametrize("kind", ["rect", "multi_rect", "brush"])
def test_reproducible_and_distinct_per_rank_and_step(kind):
    masks = MaskConfig(kind=kind, hole_min_px=8, hole_max_px=20, local_px=32)
    first, again = draw(masks, batch=8), draw(masks, batch=8)
    assert torch.equal(first.hole_mask, again.hole_mask)
    assert torch.equal(first.local_origin, again.local_origin)
    for other in (
        draw(masks, batch=8, rank=1),
        draw(masks, batch=8, step=1),
        draw(masks, batch=8, seed=1),
    ):
        assert not torch.equal(first.hole_mask, other.hole_mask)


def test_hole_generator_seeds():
    def first_draw(seed, rank, step):
        return torch.rand(4, generator=hole_generator(seed, rank, step, "cpu"))

    draws = [first_draw(seed, rank, step) for seed in (0, 1) for rank in (0, 1) for step in (0, 1)]
    assert len({tuple(values.tolist()) for values in draws}) == 8
    assert torch.equal(first_draw(-3, 2, 10**9), first_draw(-3, 2, 10**9))


def test_crop_local_matches_slicing():
    images = torch.rand(5, 3, 24, 20)
    origin = torch.tensor([[0, 0], [8, 12], [16, 4], [3, 7], [16, 12]])
    crops = crop_local(images, origin, 8)
    assert crops.shape == (5, 3, 8, 8)
    for n, (top, left) in enumerate(origin.tolist()):
        assert torch.equal(crops[n], images[n, :, top : top + 8, left : left + 8])
    channels_last = images.contiguous(memory_format=torch.channels_last)
    assert torch.equal(crop_local(channels_last, origin, 8), crops)


def test_crop_local_is_differentiable():
    images = torch.rand(3, 2, 10, 10, dtype=torch.float64, requires_grad=True)
    origin = torch.tensor([[0, 1], [5, 5], [2, 0]])
    weights = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    (crop_local(images, origin, 4) * weights).sum().backward()
    expected = torch.zeros_like(images)
    for n, (top, left) in enumerate(origin.tolist()):
        expected[n, :, top : top + 4, left : left + 4] = weights[n]
    assert torch.equal(images.grad, expected)
    assert torch.autograd.gradcheck(
        lambda x: crop_local(x, origin, 4), (images.detach().requires_grad_(),)
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["center", "rect", "multi_rect", "brush"])
def test_no_host_sync_on_cuda(kind):
    masks = MaskConfig(
        kind=kind, hole_min_px=8, hole_max_px=32 if kind == "center" else 20, local_px=32
    )
    generator = hole_generator(0, 0, 0, "cuda")
    images = torch.rand(8, 3, IMAGE_PX, IMAGE_PX, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        holes = make_holes(masks, 8, IMAGE_PX, generator, "cuda")
        crop_local(images, holes.local_origin, 32)
    finally:
        torch.cuda.set_sync_debug_mode("default")
