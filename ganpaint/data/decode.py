"""Decoding shard images and cutting square crops: GLCIC's random crops or DCGAN's centre crops for
training, centre crops for evaluation, written into CHW RGB uint8 batches.

A crop is chosen in source pixels and resized once to the output side, which is the same as the
paper's "scale the shortest side to a random size, then crop" but resizes only the pixels kept.

How far a JPEG is reduced while decoding follows from the caller's needed side (the config's
crop sizes) and the image's own size, read from its header: never from the manifest, which anyone
can edit (its `parameters.size` describes the pack, it does not steer decoding).
"""

from __future__ import annotations

import io
import struct

import cv2
import numpy as np
from PIL import Image

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


# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they hold the size.
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xDA)])  # markers without a length field
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking its marker segments; None if absent."""
    position = 2
    while position + 9 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker in JPEG_FRAMES:
            height, width = struct.unpack_from(">HH", data, position + 5)
            return width, height
        elif marker in JPEG_STANDALONE:
            position += 2
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a WebP's first chunk (lossy VP8, lossless VP8L or extended VP8X)."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an encoded image from its header alone (microseconds: JPEG, PNG and
    WebP are parsed here, PIL reads any other header); None when there is no readable header."""
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR":
        return struct.unpack_from(">II", data, 16)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # any unreadable header: decode at full size, and let OpenCV judge the data
        return None


def decode_bgr(data: bytes, needed_px: int = 0) -> np.ndarray | None:
    """Encoded image -> [H, W, 3] uint8 BGR (OpenCV order), or None when the bytes do not decode.

    Decoded reduced (decode_reduction) as far as keeps its shortest side, read from its header, at
    least `needed_px`; needed_px 0 decodes at full size.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        return None
    reduction = 1
    if needed_px:
        size = header_size(data)
        reduction = decode_reduction(min(size), needed_px) if size else 1
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
