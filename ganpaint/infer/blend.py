"""GLCIC post-processing: fast marching fills the hole, then the net's gradients are Poisson-blended.

Iizuka et al. 2017 blend the completion net's output into the photo this way, so that a colour
offset between the net and the photo becomes no seam.
"""

from __future__ import annotations

import cv2
import numpy as np

from ganpaint.baselines import telea_inpaint_uint8

# The Poisson region reaches this far past the hole: OpenCV erodes the clone mask by ~3 px, and
# the rest keeps the solve's boundary on known pixels.
BLEND_MARGIN_PX = 5


def _mirror_pads(region: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that mirrors a border-touching region whole, with a
    clear ring beyond it (capped at the image size: a region spanning the image stays clipped)."""
    height, width = region.shape
    x, y, w, h = cv2.boundingRect(region)
    clear = 2  # OpenCV treats the mask's outer ring as boundary: keep the mirrored region off it

    def pad(touches: bool, extent: int, size: int) -> int:
        return min(extent + clear, size - 1) if touches else clear

    return (
        pad(y == 0, y + h, height),
        pad(y + h == height, height - y, height),
        pad(x == 0, x + w, width),
        pad(x + w == width, width - x, width),
    )


def poisson_blend(
    prediction: np.ndarray, original: np.ndarray, hole: np.ndarray, source: str
) -> np.ndarray:
    """GLCIC post-processing of uint8 RGB [H, W, 3] images -> uint8 [H, W, 3].

    The prediction's gradients are cloned (NORMAL_CLONE) into the original over the slightly
    dilated hole, the surroundings giving the colours: a colour offset between the net and the
    photo is removed instead of left as a seam. Where the hole meets the image border, all three
    arrays are mirrored across it, so the solve sees no boundary there (a zero-flux border) rather
    than OpenCV's clipped region. Telea's fast marching first fills the original's hole, so any
    boundary the solve still reads (a hole spanning the whole image) has plausible colours. If
    OpenCV fails, the prediction comes back unblended with a warning. Only the hole of the result
    is meant to be used.
    """
    hole_u8 = hole.astype(np.uint8) * 255
    background = telea_inpaint_uint8(original, hole_u8)
    region = cv2.dilate(hole_u8, np.ones((3, 3), np.uint8), iterations=BLEND_MARGIN_PX)
    top, bottom, left, right = _mirror_pads(region)

    def mirrored(pixels: np.ndarray) -> np.ndarray:
        return cv2.copyMakeBorder(pixels, top, bottom, left, right, cv2.BORDER_REFLECT_101)

    padded_region = mirrored(region)
    x, y, w, h = cv2.boundingRect(padded_region)
    try:
        blended = cv2.seamlessClone(
            mirrored(prediction),
            mirrored(background),
            padded_region,
            (x + w // 2, y + h // 2),
            cv2.NORMAL_CLONE,
        )
    except cv2.error as error:
        print(
            f"warning: {source}: Poisson blending failed ({str(error).strip().splitlines()[-1]}); not blended"
        )
        return prediction
    height, width = hole.shape
    return blended[top : top + height, left : left + width]
