"""Users' image files and uploads: the pixel-count guard before decoding, 8-bit upright decoding,
encoding.

A compressed file can be tiny and still decode to billions of pixels (a 20000 x 20000 PNG of one
colour is a few kB). The guard reads only the header (PIL opens files lazily) and refuses an
image above the limit in one line, before OpenCV allocates anything. A file whose header PIL
cannot read is refused too, rather than handed to a decoder without a size check.

Pixels come back as a viewer shows them: turned by their EXIF orientation (as PIL's
ImageOps.exif_transpose turns them, which `ganpaint shards` uses), in their own layout (grey, BGR,
BGRA), 16-bit images scaled to 8 bits. What is written carries no EXIF, so it shows upright too.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ganpaint.data.pixels import to_uint8
from ganpaint.errors import UserError

DEFAULT_MAX_MEGAPIXELS = 40.0  # a 48 MP phone photo is 8000 x 6000: resize it first
EXIF_ORIENTATION = 0x0112
# What each EXIF orientation asks of the stored [H, W, ...] pixels to show them upright: the
# transposes of ImageOps.exif_transpose (2 mirrors, 6 turns a quarter clockwise, ...).
UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda pixels: pixels[:, ::-1],
    3: lambda pixels: pixels[::-1, ::-1],
    4: lambda pixels: pixels[::-1],
    5: lambda pixels: pixels.swapaxes(0, 1),
    6: lambda pixels: np.rot90(pixels, -1),
    7: lambda pixels: pixels.swapaxes(0, 1)[::-1, ::-1],
    8: lambda pixels: np.rot90(pixels, 1),
}


def check_pixel_count(width: int, height: int, max_megapixels: float, source: str) -> None:
    """UserError when width x height exceeds the limit (in megapixels, 1 MP = 1e6 pixels)."""
    if width * height > max_megapixels * 1e6:
        raise UserError(
            f"{source}: {width}x{height} px ({width * height / 1e6:.1f} MP) is above the "
            f"{max_megapixels:g} MP limit (--max-megapixels); resize it first"
        )


def check_header(data: bytes, source: str, max_megapixels: float) -> int:
    """Check an encoded image's size from its header, without decoding its pixels.

    Returns its EXIF orientation (1, upright as stored, when it has none): browsers and viewers
    show the image turned by it.
    """
    try:
        with warnings.catch_warnings():
            # PIL's own bomb warning / error fire above 89 / 179 MP; ours is the limit that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Image.DecompressionBombError:
        raise UserError(
            f"{source}: more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP, above the "
            f"{max_megapixels:g} MP limit (--max-megapixels); resize it first"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise UserError(f"{source}: not a readable image") from None
    check_pixel_count(width, height, max_megapixels, source)
    return orientation if orientation in UPRIGHT else 1


def to_eight_bits(pixels: np.ndarray, source: str) -> np.ndarray:
    """uint8 pixels of decoded uint8 or uint16 ones (16-bit PNG or TIFF, grey or colour), scaled
    by the rule `ganpaint shards` packs them with (`data.pixels.to_uint8`)."""
    if pixels.dtype not in (np.uint8, np.uint16):
        raise UserError(f"{source}: {pixels.dtype} pixels; only 8- and 16-bit images are supported")
    return to_uint8(pixels)


def decode_image(
    data: bytes,
    source: str,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
    flags: int = cv2.IMREAD_UNCHANGED,
    upright: bool = True,
) -> np.ndarray:
    """Encoded bytes -> uint8 pixels in OpenCV's layouts (BGR / BGRA / grey), size-checked first.

    `upright`: turned by the image's EXIF orientation, as viewers show it (the stored layout
    otherwise); grey and alpha are kept either way. 16-bit images are scaled to 8 bits
    (to_eight_bits). UserError naming `source` for an unreadable, too large or float image.
    """
    orientation = check_header(data, source, max_megapixels)
    if flags != cv2.IMREAD_UNCHANGED:  # UNCHANGED ignores the orientation already
        # OpenCV would turn colour and grey decodes itself: turned below, once, for every layout
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        pixels = None
    if pixels is None:
        raise UserError(f"{source}: not a readable image")
    pixels = to_eight_bits(pixels, source)
    if upright and orientation != 1:
        pixels = np.ascontiguousarray(UPRIGHT[orientation](pixels))
    return pixels


def read_image(
    path: Path, flags: int = cv2.IMREAD_UNCHANGED, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS
) -> np.ndarray:
    """Decode an image file, upright (see decode_image). UserError naming the file."""
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
