"""Where a net runs on a photo: windows around the holes, each at the scale the net was trained at.

A 2560 x 1600 photo with one brushed hole needs the net on a few hundred pixels around the hole,
not on four million. The holes are grouped (8-connected components), each group gets a window:

- glcic (fully convolutional): the hole's bounding box plus the net's receptive radius of context
  on every side, aligned to the net's total stride. At scale 1 the hole's prediction is then the
  one the net makes on the whole image (no border effect reaches it). A hole thicker than the
  trained holes (its farthest pixel from known ones, `reach`, beyond hole_max_px / 2) is shrunk to
  the trained scale: the net never learned to fill farther from the context than that.
- context_encoder / wgan_unet (predict the centre square): a square centred on the hole, at least
  twice its side and at least image_px, resized to image_px; where it leaves the photo it is
  mirrored, so a hole at the border can be filled too.

Windows that overlap are merged (their groups' boxes joined, and the window planned again) until
none overlaps, so every hole pixel sees all its context and each window is filled once from the
original pixels. Far-apart holes keep separate windows: one bounding window would be as large as
the photo. A mask with more than MAX_GROUPS pieces (speckle) gets one bounding window instead,
keeping the planning cost bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from torch import nn

from ganpaint.errors import UserError
from ganpaint.infer.export import Exported

BLEND_CONTEXT_PX = 8  # the Poisson blend's margin past the hole (5) plus OpenCV's ring (3)
MAX_GROUPS = 64


@dataclass(frozen=True)
class NetGeometry:
    """What the windows need to know about a net."""

    predicts_center: bool
    size_multiple: int  # fully convolutional nets: input sides a multiple of this (the family's)
    context_px: int  # glcic: receptive radius at the net's scale
    trained_reach_px: float  # farthest a trained hole pixel lies from known pixels
    image_px: int  # the training crop: the input side of centre nets


@dataclass(frozen=True)
class Window:
    """A box of the photo (rows top:bottom, columns left:right; centre nets' may leave the photo)
    and the scale the net sees it at (net pixels per photo pixel)."""

    top: int
    bottom: int
    left: int
    right: int
    scale: float

    def inside(self, height: int, width: int) -> tuple[slice, slice]:
        """The part of the window inside a height x width photo, as slices."""
        return (
            slice(max(self.top, 0), min(self.bottom, height)),
            slice(max(self.left, 0), min(self.right, width)),
        )


def receptive_radius_px(generator: nn.Module) -> int:
    """Half the receptive field of a sequential convolutional net, from its layers' shapes.

    Each convolution widens the field by (kernel - 1) x dilation input steps, each transposed
    convolution by (ceil(kernel / stride) - 1); strides change the step. The overall stride is
    added: the exact field depends on the pixel's position modulo the stride (glcic: 299-303 px).
    """
    field, step, total_stride = 1.0, 1.0, 1.0
    for layer in generator.modules():
        if isinstance(layer, nn.ConvTranspose2d):
            kernel, stride = layer.kernel_size[0], layer.stride[0]
            field += (math.ceil(kernel / stride) - 1) * step
            step /= stride
        elif isinstance(layer, nn.Conv2d):
            field += (layer.kernel_size[0] - 1) * layer.dilation[0] * step
            step *= layer.stride[0]
        total_stride = max(total_stride, step)
    return math.ceil(field / 2) + math.ceil(total_stride)


@dataclass
class _Group:
    top: int
    bottom: int
    left: int
    right: int
    reach: float

    def join(self, other: _Group) -> _Group:
        return _Group(
            min(self.top, other.top),
            max(self.bottom, other.bottom),
            min(self.left, other.left),
            max(self.right, other.right),
            max(self.reach, other.reach),
        )


def _hole_groups(hole: np.ndarray) -> list[_Group]:
    """One group per 8-connected piece of the hole (one for all of them past MAX_GROUPS)."""
    hole_u8 = hole.astype(np.uint8)
    # OpenCV's parallel labelling starts its thread pool, and a process forked after that (a
    # DataLoader worker of a later training run in the same process) hangs at its first parallel
    # OpenCV call: label on this thread only.
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        count, labels, stats, _ = cv2.connectedComponentsWithStats(hole_u8, connectivity=8)
    finally:
        cv2.setNumThreads(threads)
    reach_map = cv2.distanceTransform(hole_u8, cv2.DIST_L2, cv2.DIST_MASK_5)
    reaches = np.zeros(count, np.float32)
    np.maximum.at(reaches, labels[hole], reach_map[hole])
    groups = [
        _Group(int(y), int(y + h), int(x), int(x + w), float(reaches[label]))
        for label, (x, y, w, h, _) in enumerate(stats)
        if label > 0
    ]
    if len(groups) > MAX_GROUPS:
        bounding = groups[0]
        for group in groups[1:]:
            bounding = bounding.join(group)
        return [bounding]
    return groups


def _glcic_window(group: _Group, geometry: NetGeometry, height: int, width: int) -> Window:
    scale = min(1.0, geometry.trained_reach_px / max(group.reach, 1e-6))
    margin = math.ceil(geometry.context_px / scale)
    # stride-aligned origin: at scale 1 the net's downsampling grid matches the whole image's
    multiple = geometry.size_multiple
    top = max(0, (group.top - margin) // multiple * multiple)
    left = max(0, (group.left - margin) // multiple * multiple)
    bottom = min(height, -(-(group.bottom + margin) // multiple) * multiple)
    right = min(width, -(-(group.right + margin) // multiple) * multiple)
    return Window(top, bottom, left, right, scale)


def _centre_window(group: _Group, geometry: NetGeometry) -> Window:
    hole_side = max(group.bottom - group.top, group.right - group.left)
    side = max(2 * hole_side, geometry.image_px, hole_side + 2 * BLEND_CONTEXT_PX)
    side += side % 2
    top = (group.top + group.bottom) // 2 - side // 2
    left = (group.left + group.right) // 2 - side // 2
    return Window(top, top + side, left, left + side, geometry.image_px / side)


def _overlap(first: Window, second: Window) -> bool:
    return (
        first.top < second.bottom
        and second.top < first.bottom
        and first.left < second.right
        and second.left < first.right
    )


def plan_windows(hole: np.ndarray, geometry: NetGeometry, source: str) -> list[Window]:
    """Disjoint windows covering every hole pixel of bool hole [H, W], with their context."""
    height, width = hole.shape

    def window_for(group: _Group) -> Window:
        if geometry.predicts_center:
            return _centre_window(group, geometry)
        return _glcic_window(group, geometry, height, width)

    groups = _hole_groups(hole)
    windows = [window_for(group) for group in groups]
    merged = True
    while merged:
        merged = False
        for first in range(len(groups)):
            for second in range(first + 1, len(groups)):
                if _overlap(windows[first], windows[second]):
                    groups[first] = groups[first].join(groups.pop(second))
                    windows.pop(second)
                    windows[first] = window_for(groups[first])
                    merged = True
                    break
            if merged:
                break
    for window in windows:
        _check_mirror(window, height, width, source)
    return windows


def _check_mirror(window: Window, height: int, width: int, source: str) -> None:
    """A window may leave the photo by less than the photo's size (mirroring needs that much)."""
    if (
        max(-window.top, window.bottom - height) >= height
        or max(-window.left, window.right - width) >= width
    ):
        side = window.bottom - window.top
        raise UserError(
            f"{source}: this net fills the centre of a {side} px square around the hole, and a "
            f"{width}x{height} px image is too small to mirror into it; use a larger image"
        )


def net_geometry(exported: Exported) -> NetGeometry:
    """The window geometry of an exported inpainting net, from its nets and training config."""
    generator = exported.generator
    predicts_center = exported.family.predicts_center
    return NetGeometry(
        predicts_center=predicts_center,
        size_multiple=exported.family.size_multiple,
        context_px=0 if predicts_center else receptive_radius_px(generator),
        trained_reach_px=exported.config.masks.hole_max_px / 2,
        image_px=exported.config.data.image_px,
    )
