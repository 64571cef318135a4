"""Turning an image of any bit depth and PIL mode into 8-bit RGB: the one rule for packing (and for
any reader of user images that wants the same numbers).

Scales (what "mean 127" means for each kind of pixel):
    uint8                    as stored
    bool (mode 1)            0 or 255
    uint16 (I;16, I;16B ...) 0..65535, rounded to 0..255 (v * 255 / 65535)
    int32 (mode I)           read as 16-bit data, its usual content (16-bit PNG and PGM files open
                             as mode I in older Pillows): clipped to 0..65535, then as uint16
    float (mode F)           0..1, the float image convention (float TIFF, OpenCV, scikit-image):
                             clipped, NaN as 0, then * 255 rounded
Alpha is dropped, never composited: the colour stored under transparent pixels is kept, which is
what `ganpaint inpaint` feeds its net (it sets the alpha channel aside and puts it back after), so
training sees transparent areas as inference will. A palette image (P) takes its palette colours,
its transparent index included; CMYK, YCbCr, LAB and HSV are converted by PIL.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

UINT16_MAX = 65535


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Pixels of any integer, bool or float dtype as uint8, by the scales of the module docstring.

    Works channel by channel, whatever the channel order (RGB, BGR, with alpha last or not).
    """
    if values.dtype == np.uint8:
        return values
    if values.dtype == np.bool_:
        return values.astype(np.uint8) * 255
    if np.issubdtype(values.dtype, np.floating):
        unit = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        return np.rint(np.clip(unit, 0.0, 1.0) * 255).astype(np.uint8)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{values.dtype} pixels are not an image")
    # Integers of 16 bits or more are on the 16-bit scale; uint32 keeps v * 255 + 32767 exact.
    wide = np.clip(values, 0, UINT16_MAX).astype(np.uint32)
    return ((wide * 255 + UINT16_MAX // 2) // UINT16_MAX).astype(np.uint8)


def is_wide_mode(mode: str) -> bool:
    """Whether PIL's convert("RGB") would clip the mode's values instead of scaling them."""
    return mode in ("I", "F") or mode.startswith("I;16")


def to_rgb8(image: Image.Image) -> np.ndarray:
    """[H, W, 3] uint8 RGB of a PIL image of any mode (module docstring). ValueError for a mode
    PIL cannot convert to RGB."""
    if is_wide_mode(image.mode):
        grey = to_uint8(np.asarray(image))
        if grey.ndim != 2:
            raise ValueError(f"mode {image.mode} with shape {grey.shape} is not a grey image")
        return np.repeat(grey[:, :, None], 3, axis=2)
    # convert("RGB") drops alpha (LA, PA, RGBA) and keeps palette colours: the docstring's rule.
    return np.asarray(image.convert("RGB"))
