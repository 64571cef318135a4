"""Users' image files and uploads: the pixel-count guard before decoding, 8-bit decoding, encoding.

A compressed file can be tiny and still decode to billions of pixels (a 20000 x 20000 PNG of one
colour is a few kB). The guard reads only the header (PIL opens files lazily) and refuses an
image above the limit in one line, before OpenCV allocates anything. A file whose header PIL
cannot read is refused too, rather than handed to a decoder without a size check.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ganpaint.errors import UserError

DEFAULT_MAX_MEGAPIXELS = 40.0  # a 48 MP phone photo is 8000 x 6000: resize it first
EXIF_ORIENTATION = 0x0112


def check_pixel_count(width: int, height: int, max_megapixels: float, source: str) -> None:
    """UserError when width x height exceeds the limit (in megapixels, 1 MP = 1e6 pixels)."""
    if width * height > max_megapixels * 1e6:
        raise UserError(
            f"{source}: {width}x{height} px ({width * height / 1e6:.1f} MP) is above the "
            f"{max_megapixels:g} MP limit (--max-megapixels); resize it first"
        )


def check_header(data: bytes, source: str, max_megapixels: float) -> bool:
    """Check an encoded image's size from its header, without decoding its pixels.

    Returns whether its EXIF orientation turns it (what browsers show, not the stored layout).
    """
    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning / error fire above 89 / 179 MP; ours is the limit that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                turned = image.getexif().get(EXIF_ORIENTATION, 1) != 1
    except Image.DecompressionBombError:
        raise UserError(
            f"{source}: more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP, above the "
            f"{max_megapixels:g} MP limit (--max-megapixels); resize it first"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise UserError(f"{source}: not a readable image") from None
    check_pixel_count(width, height, max_megapixels, source)
    return turned


def decode_image(
    data: bytes,
    source: str,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    flags: int = cv2.IMREAD_UNCHANGED,
    upright: bool = False,
) -> np.ndarray:
    """Encoded bytes -> uint8 pixels as OpenCV decodes them (BGR / BGRA / grey), size-checked first.

    `upright`: an image with an EXIF orientation is decoded turned as it says (as colour BGR:
    OpenCV applies the orientation only then); the stored layout otherwise. UserError naming
    `source` for an unreadable, too large or non-8-bit image.
    """
    if check_header(data, source, max_megapixels) and upright:
        flags = cv2.IMREAD_COLOR
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        pixels = None
    if pixels is None:
        raise UserError(f"{source}: not a readable image")
    if pixels.dtype != np.uint8:
        raise UserError(f"{source}: {pixels.dtype} pixels; only 8-bit images are supported")
    return pixels


def read_image(
    path: Path, flags: int = cv2.IMREAD_UNCHANGED, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> np.ndarray:
    """Decode an image file (see decode_image). UserError naming the file."""
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    return decode_image(path.read_bytes(), str(path), max_megapixels, flags)


def encode_image(pixels: np.ndarray, suffix: str, source: str) -> bytes:
    """uint8 pixels -> encoded bytes in the format named by `suffix` ('.png', '.jpg', ...)."""
    try:
        ok, encoded = cv2.imencode(suffix or ".png", pixels)
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(f"{source}: cannot write this image format (use .png)")
    return encoded.tobytes()


def write_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(pixels, path.suffix, str(path)))
