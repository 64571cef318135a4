"""Holes and local areas: drawn per sample, batched on the device, seeded by (seed, rank, step).

Everything here runs on the tensors' device without a host sync: sizes and positions are drawn as
tensors and the masks are built by comparing them with coordinate grids. Kinds:

- center: the centre square of side hole_max_px; the local area is the centre square of local_px
  (the hole itself for context_encoder and wgan_unet, where local_px = hole side).
- rect (GLCIC): one hole of random height and width in [hole_min_px, hole_max_px]. With
  local_placement "centred" (the paper's "patch centred around the completed region") the hole is
  placed uniformly in the image and the local area of local_px is centred on it, clamped at the
  borders (it still holds the whole hole); with "random" the local area is placed uniformly and the
  hole uniformly inside it.
- multi_rect: 1..max_holes such holes; the first is placed as a rect hole (with its local area),
  the others anywhere.
- brush: free-form strokes in the manner of LaMa's thin / medium / thick masks; the local area is
  centred on the strokes' bounding box ("centred", clamped; large strokes may reach beyond it) or
  placed at random.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from ganpaint.config import MaskConfig


@dataclass
class Holes:
    hole_mask: torch.Tensor  # [N, 1, H, W] float {0, 1}, 1 = hole
    local_origin: torch.Tensor  # [N, 2] long, (top, left) of each sample's local area


@dataclass(frozen=True)
class BrushPreset:
    """LaMa's irregular-mask parameters at 256 px (scaled linearly to other sizes)."""

    min_strokes: int
    max_strokes: int
    max_vertices: int  # segments per stroke: 1..max_vertices
    max_length_px: float  # segment length in [10, 10 + max_length_px) px
    max_width_px: float  # brush width in [5, 5 + max_width_px) px
    max_turn: float  # radians a stroke may turn at each vertex (LaMa's max_angle)


# LaMa (Suvorov et al. 2022) thin_256 / medium_256 / thick_256 irregular-mask parameters. Departures:
# strokes only (LaMa adds random boxes to medium / thick 30% of the time and rejects masks covering
# over 70%), and each segment turns by a uniform angle in [-max_turn, max_turn] from the previous
# one, where LaMa draws an integer angle in [0, max_angle) radians.
BRUSH_PRESETS = {
    "thin": BrushPreset(4, 50, 5, 40, 10, 4.0),
    "medium": BrushPreset(4, 5, 5, 100, 50, 4.0),
    "thick": BrushPreset(1, 5, 5, 200, 100, 4.0),
}


def hole_generator(seed: int, rank: int, step: int, device: torch.device | str) -> torch.Generator:
    """A generator on `device` seeded by a hash of (seed, rank, step): distinct per rank and step,
    identical when a run is resumed at the same step."""
    digest = hashlib.blake2b(f"{seed}/{rank}/{step}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1)


def _uniform(shape: tuple[int, ...], generator: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=device)


def _integers(
    low: int | torch.Tensor,
    high: int | torch.Tensor,
    shape: tuple[int, ...],
    generator: torch.Generator,
    device,
) -> torch.Tensor:
    """Uniform integers in [low, high] (inclusive; bounds may be tensors), as long."""
    span = high - low + 1  # a Python int stays one: no scalar copied to the device
    return (low + (_uniform(shape, generator, device) * span).floor()).long()


def _rect_mask(
    top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor, image_px: int
) -> torch.Tensor:
    """[N, K] rectangles -> [N, H, W] bool union of them."""
    coords = torch.arange(image_px, device=top.device)
    rows = (coords >= top[..., None]) & (coords < (top + height)[..., None])  # [N, K, H]
    cols = (coords >= left[..., None]) & (coords < (left + width)[..., None])  # [N, K, W]
    return (rows[..., :, None] & cols[..., None, :]).any(dim=1)


def _centred_origin(
    start: torch.Tensor, extent: torch.Tensor, local_px: int, image_px: int
) -> torch.Tensor:
    """Origin (along one axis) of a local_px area centred on [start, start + extent), clamped inside
    the image. When extent <= local_px the area holds the whole span, clamped or not."""
    return (start + torch.div(extent - local_px, 2, rounding_mode="floor")).clamp(
        0, image_px - local_px
    )


def _holes_in_local(
    masks: MaskConfig, batch: int, image_px: int, count: int, generator: torch.Generator, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` rect holes per sample, the first with its local area placed by
    masks.local_placement. -> (mask, origin)."""
    shape = (batch, count)
    height = _integers(masks.hole_min_px, masks.hole_max_px, shape, generator, device)
    width = _integers(masks.hole_min_px, masks.hole_max_px, shape, generator, device)
    random_area = masks.local_placement == "random"
    area_px = torch.full(shape, image_px, device=device)
    area_top = torch.zeros(shape, dtype=torch.long, device=device)
    area_left = torch.zeros(shape, dtype=torch.long, device=device)
    if random_area:  # the first hole is placed inside the local area, the others anywhere
        origin = _integers(0, image_px - masks.local_px, (batch, 2), generator, device)
        area_px[:, 0] = masks.local_px
        area_top[:, 0], area_left[:, 0] = origin[:, 0], origin[:, 1]
    top = area_top + _integers(0, area_px - height, shape, generator, device)
    left = area_left + _integers(0, area_px - width, shape, generator, device)
    active = torch.arange(count, device=device) < _integers(1, count, (batch, 1), generator, device)
    if not random_area:
        origin = torch.stack(
            [
                _centred_origin(top[:, 0], height[:, 0], masks.local_px, image_px),
                _centred_origin(left[:, 0], width[:, 0], masks.local_px, image_px),
            ],
            dim=1,
        )
    # An inactive hole gets zero height: it adds nothing to the union.
    return _rect_mask(top, left, height * active, width, image_px), origin


def _bounding_box_origin(hole: torch.Tensor, local_px: int) -> torch.Tensor:
    """[N, 2] origins of local areas centred on each hole's bounding box (hole [N, H, W] bool,
    not empty), found without a host sync: first and last covered row / column by argmax."""
    image_px = hole.shape[-1]
    origins = []
    for covered in (hole.any(dim=2), hole.any(dim=1)):  # rows, then columns: [N, H|W]
        first = covered.int().argmax(dim=1)
        last = image_px - 1 - covered.flip(1).int().argmax(dim=1)
        origins.append(_centred_origin(first, last - first + 1, local_px, image_px))
    return torch.stack(origins, dim=1)


def _draw_segments(
    hole: torch.Tensor,
    start: torch.Tensor,
    end: torch.Tensor,
    radius: torch.Tensor,
    active: torch.Tensor,
    window: int,
) -> None:
    """Add thick segments [N, K, 2] (y, x) of `radius` [N, K] to hole [N, H, W] (counts, in place).

    A pixel is covered when its centre lies within `radius` of the segment; segments whose `active`
    [N, K] is False add nothing. Each segment is evaluated only in a window x window box that holds
    it (window >= its length + width + 1), clamped inside the image: thin strokes cost their box,
    not the whole image.
    """
    image_px = hole.shape[-1]
    corner = (torch.minimum(start, end) - radius[..., None]).floor().long()
    corner = corner.clamp(0, image_px - window)  # a box inside the image still holds the segment
    offsets = torch.arange(window, device=hole.device)
    ys, xs = corner[..., 0, None] + offsets, corner[..., 1, None] + offsets  # [N, K, window]
    ry = (ys + 0.5)[..., :, None] - start[..., 0, None, None]  # [N, K, window, 1]
    rx = (xs + 0.5)[..., None, :] - start[..., 1, None, None]  # [N, K, 1, window]
    direction = end - start
    dy, dx = direction[..., 0, None, None], direction[..., 1, None, None]
    inverse_length2 = 1 / (dy * dy + dx * dx).clamp_min(1e-6)
    along = ((ry * dy + rx * dx) * inverse_length2).clamp(0, 1)
    distance2 = (ry - along * dy).pow(2) + (rx - along * dx).pow(2)
    covered = (distance2 <= radius.pow(2)[..., None, None]) & active[..., None, None]
    index = ys[..., :, None] * image_px + xs[..., None, :]
    hole.view(hole.shape[0], -1).scatter_add_(
        1, index.flatten(1), covered.flatten(1).to(hole.dtype)
    )


def _brush_holes(
    preset: BrushPreset, batch: int, image_px: int, generator: torch.Generator, device
) -> torch.Tensor:
    """LaMa-style strokes: each a polyline from a random start, turning at every vertex."""
    scale = image_px / 256
    strokes, vertices = preset.max_strokes, preset.max_vertices
    shape = (batch, strokes, vertices)
    stroke_count = _integers(preset.min_strokes, strokes, (batch, 1), generator, device)
    vertex_count = _integers(1, vertices, (batch, strokes, 1), generator, device)
    active = (torch.arange(strokes, device=device) < stroke_count)[..., None] & (
        torch.arange(vertices, device=device) < vertex_count
    )  # [N, S, V]
    heading = _uniform((batch, strokes, 1), generator, device) * 2 * math.pi
    turn = (_uniform(shape, generator, device) * 2 - 1) * preset.max_turn
    heading = heading + turn.cumsum(-1)
    max_length, max_width = (10 + preset.max_length_px) * scale, (5 + preset.max_width_px) * scale
    length = (10 + _uniform(shape, generator, device) * preset.max_length_px) * scale
    # At least 1.5 px wide so a stroke always covers the pixel under its start, at any scale.
    width = ((5 + _uniform(shape, generator, device) * preset.max_width_px) * scale).clamp_min(1.5)
    window = min(image_px, math.ceil(max_length + max(max_width, 1.5)) + 2)
    point = _uniform((batch, strokes, 2), generator, device) * image_px
    hole = torch.zeros(batch, image_px, image_px, device=device)
    for vertex in range(vertices):
        step = torch.stack([torch.sin(heading[..., vertex]), torch.cos(heading[..., vertex])], -1)
        end = (point + step * length[..., vertex, None]).clamp(0, image_px)
        _draw_segments(hole, point, end, width[..., vertex] / 2, active[..., vertex], window)
        point = end
    return hole > 0


def make_holes(
    masks: MaskConfig,
    batch: int,
    image_px: int,
    generator: torch.Generator,
    device: torch.device | str,
) -> Holes:
    """Draw a batch of holes and local areas of kind `masks.kind` (see the module docstring)."""
    if masks.kind == "center":
        side = masks.hole_max_px
        start = (image_px - side) // 2
        hole = torch.zeros(batch, image_px, image_px, dtype=torch.bool, device=device)
        hole[:, start : start + side, start : start + side] = True
        origin = torch.full((batch, 2), (image_px - masks.local_px) // 2, device=device)
    elif masks.kind in ("rect", "multi_rect"):
        count = 1 if masks.kind == "rect" else masks.max_holes
        hole, origin = _holes_in_local(masks, batch, image_px, count, generator, device)
    elif masks.kind == "brush":
        hole = _brush_holes(BRUSH_PRESETS[masks.brush], batch, image_px, generator, device)
        if masks.local_placement == "random":
            origin = _integers(0, image_px - masks.local_px, (batch, 2), generator, device)
        else:
            origin = _bounding_box_origin(hole, masks.local_px)
    else:
        raise ValueError(f"unknown mask kind {masks.kind!r}")
    return Holes(hole[:, None].float(), origin.long())


def crop_local(images: torch.Tensor, local_origin: torch.Tensor, local_px: int) -> torch.Tensor:
    """Per-sample crops: images [N, C, H, W], local_origin [N, 2] (top, left) -> [N, C, L, L].

    One gather by index arithmetic (no host sync, no loop over the batch); differentiable with
    respect to `images`. Origins must keep the crop inside the image.
    """
    offsets = torch.arange(local_px, device=images.device)
    rows = (local_origin[:, 0, None] + offsets)[:, :, None]  # [N, L, 1]
    cols = (local_origin[:, 1, None] + offsets)[:, None, :]  # [N, 1, L]
    batch = torch.arange(images.shape[0], device=images.device)[:, None, None]
    # Broadcast [N, L, L] indices into the NHWC view give [N, L, L, C]; back to [N, C, L, L].
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
