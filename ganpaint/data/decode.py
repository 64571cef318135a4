"""Decoding shard images and cutting square crops: GLCIC's random crops or DCGAN's centre crops for
training, centre crops for evaluation, written into CHW RGB uint8 batches.

A crop is chosen in source pixels and resized once to the output side, which is the same as the
paper's "scale the shortest side to a random size, then crop" but resizes only the pixels kept.
"""

from __future__ import annotations

import cv2
import numpy as np

# JPEG decoders scale by 1/2, 1/4 or 1/8 in the DCT at a fraction of the cost of a full decode.
DECODE_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


def decode_reduction(packed_px: int, needed_px: int) -> int:
    """Largest decode reduction (1, 2, 4 or 8) that keeps a `packed_px` shortest side >= `needed_px`."""
    return max(factor for factor in DECODE_FLAGS if factor == 1 or packed_px // factor >= needed_px)


def decode_bgr(data: bytes, reduction: int = 1) -> np.ndarray | None:
    """Encoded image -> [H, W, 3] uint8 BGR (OpenCV order), or None when the bytes do not decode."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        return None
    image = cv2.imdecode(buffer, DECODE_FLAGS[reduction])
    return image if image is not None and image.ndim == 3 else None


def random_square(
    height: int,
    width: int,
    image_px: int,
    resize_min_px: int,
    resize_max_px: int,
    rng: np.random.Generator,
) -> tuple[int, int, int]:
    """(left, top, side) in source pixels of a GLCIC crop.

    The shortest side is scaled to a uniform random size in [resize_min_px, resize_max_px] and an
    image_px square is cut at a uniform random place: in source pixels that square has side
    image_px * shortest / scaled_size.
    """
    shortest = min(height, width)
    scaled = int(rng.integers(resize_min_px, resize_max_px + 1))
    side = min(shortest, max(1, round(image_px * shortest / scaled)))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    return left, top, side


def scaled_centre_square(
    height: int, width: int, image_px: int, resize_px: int
) -> tuple[int, int, int]:
    """(left, top, side) in source pixels of Resize(resize_px) + CenterCrop(image_px), the DCGAN
    preprocessing: the shortest side scaled to resize_px, the centred image_px square of that."""
    shortest = min(height, width)
    side = min(shortest, max(1, round(image_px * shortest / resize_px)))
    return (width - side) // 2, (height - side) // 2, side


def centre_square(height: int, width: int) -> tuple[int, int, int]:
    """(left, top, side) of the largest centred square: shortest side scaled to the output side."""
    side = min(height, width)
    return (width - side) // 2, (height - side) // 2, side


def crop_into(
    out: np.ndarray, image_bgr: np.ndarray, square: tuple[int, int, int], flip: bool
) -> None:
    """Cut `square` from a BGR image, resize it to out's side and store it as CHW RGB in `out`.

    out: [3, P, P] uint8 (a view into the batch, written in place). INTER_AREA when shrinking,
    INTER_LINEAR when enlarging; a square already P px is copied without resampling.
    """
    left, top, side = square
    output_px = out.shape[-1]
    patch = image_bgr[top : top + side, left : left + side]
    if side != output_px:
        interpolation = cv2.INTER_AREA if side > output_px else cv2.INTER_LINEAR
        patch = cv2.resize(patch, (output_px, output_px), interpolation=interpolation)
    if flip:
        patch = patch[:, ::-1]
    out[:] = patch.transpose(2, 0, 1)[::-1]  # HWC BGR -> CHW RGB in the one copy into the batch
