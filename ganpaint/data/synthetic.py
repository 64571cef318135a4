"""Synthetic images: toy faces and striped shapes, drawn procedurally and deterministic by seed.

They are the embedded default every demo and test trains on, so they are built for a learnable
inpainting signal: a face is mirror-symmetric (a hidden eye can be inferred from the other, whose
iris colour it shares), its parts sit at predictable places relative to the face ellipse, and the
backgrounds are smooth gradients; the pattern images continue stripes and simple shapes across any
hole. Image `index` of `seed` is the same whatever the count, shard size or worker that draws it.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

FACE_SHARE = 0.8  # the rest are stripes-and-shapes images
# Colours vary widely between images but gently within one, so the surroundings of a hole predict
# its content far better than any dataset-wide colour: that gap is the learning signal.
GRADIENT_CONTRAST = 35.0  # std of the colour change across a background
BLUR_SHARE = 0.008  # box blur radius as a share of the side (1 px at 64 px, 2 px at 256 px)
SUBPIXEL_BITS = 4  # cv2 drawing takes fixed-point coordinates: smooth edges at small sizes

# Colour palettes (RGB, 0-255): each colour is jittered per image.
SKIN_TONES = ((241, 194, 167), (224, 172, 138), (198, 134, 103), (161, 102, 73), (110, 70, 50))
HAIR_COLOURS = ((30, 24, 20), (85, 55, 35), (150, 105, 60), (215, 180, 120), (160, 60, 30))
IRIS_COLOURS = ((60, 110, 170), (90, 60, 35), (70, 130, 80), (110, 110, 120))
LIP_COLOURS = ((180, 80, 80), (150, 60, 70), (200, 110, 110))


@lru_cache(maxsize=8)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1): x [1, size], y [size, 1] (broadcast, never copied)."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return axis[None, :], axis[:, None]


def _jitter(rng: np.random.Generator, palette: tuple, spread: float = 12.0) -> np.ndarray:
    base = np.asarray(palette[rng.integers(len(palette))], dtype=np.float32)
    return np.clip(base + rng.normal(0.0, spread, 3), 0, 255)


def _ramp(size: int, angle: float) -> np.ndarray:
    """Linear ramp in [0, 1] rising along `angle` (radians): [size, size] float32."""
    x, y = _unit_grid(size)
    along_x, along_y = np.cos(angle), np.sin(angle)
    reach = abs(along_x) + abs(along_y)  # the ramp's range over the unit square
    # Separable: one broadcast add of a row and a column, in float32.
    row = (0.5 + along_x / reach * (x - 0.5)).astype(np.float32)
    column = (along_y / reach * (y - 0.5)).astype(np.float32)
    return row + column


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random colour drifting gently along a random direction: [size, size, 3] uint8."""
    ramp = _ramp(size, rng.uniform(0, 2 * np.pi))
    start = rng.uniform(30, 225, 3)
    end = np.clip(start + rng.normal(0, GRADIENT_CONTRAST, 3), 0, 255)
    # One plane per channel: numpy is slow on a trailing axis of 3, and this keeps drawing at
    # thousands of images per second.
    planes = [cv2.convertScaleAbs(ramp, alpha=end[c] - start[c], beta=start[c]) for c in range(3)]
    return cv2.merge(planes)


def _point(x: float, y: float) -> tuple[int, int]:
    scale = 1 << SUBPIXEL_BITS
    return int(round(x * scale)), int(round(y * scale))


def _ellipse(
    canvas: np.ndarray, centre, axes, colour, angle: float = 0.0, arc=(0, 360), thickness=-1
):
    """Anti-aliased ellipse in float pixel units (centre, axes) on a uint8 canvas."""
    scale = 1 << SUBPIXEL_BITS
    axes_fixed = (max(1, int(axes[0] * scale)), max(1, int(axes[1] * scale)))
    cv2.ellipse(
        canvas,
        _point(*centre),
        axes_fixed,
        angle,
        arc[0],
        arc[1],
        tuple(float(c) for c in colour),
        thickness,
        cv2.LINE_AA,
        SUBPIXEL_BITS,
    )


def _face(rng: np.random.Generator, size: int) -> np.ndarray:
    """A frontal toy face on a gradient: hair, skin ellipse, symmetric eyes and brows, nose, mouth."""
    canvas = _gradient(rng, size)
    centre_x = size * rng.uniform(0.45, 0.55)
    centre_y = size * rng.uniform(0.52, 0.60)
    half_width = size * rng.uniform(0.24, 0.31)
    half_height = half_width * rng.uniform(1.15, 1.35)
    skin, hair = _jitter(rng, SKIN_TONES, 20.0), _jitter(rng, HAIR_COLOURS, 30.0)
    # Hair behind the head, then the face, then a fringe: the band of the face above the hairline.
    _ellipse(
        canvas,
        (centre_x, centre_y - 0.12 * half_height),
        (1.12 * half_width, 1.05 * half_height),
        hair,
    )
    _ellipse(canvas, (centre_x, centre_y), (half_width, half_height), skin)
    hairline = centre_y - half_height * rng.uniform(0.45, 0.65)
    _ellipse(
        canvas, (centre_x, hairline), (half_width * 1.02, half_height * 0.5), hair, arc=(180, 360)
    )
    # Eyes and brows are drawn as mirrored pairs from one set of parameters.
    eye_y = centre_y - half_height * rng.uniform(0.08, 0.2)
    eye_dx = half_width * rng.uniform(0.36, 0.46)
    eye_w, eye_h = half_width * rng.uniform(0.16, 0.22), half_width * rng.uniform(0.08, 0.12)
    iris = _jitter(rng, IRIS_COLOURS, 8.0)
    brow_lift = half_width * rng.uniform(0.18, 0.28)
    brow_thickness = max(1, int(round(size * 0.012)))
    for side in (-1, 1):
        eye_x = centre_x + side * eye_dx
        _ellipse(canvas, (eye_x, eye_y), (eye_w, eye_h), (245, 245, 240))
        _ellipse(canvas, (eye_x, eye_y), (eye_h * 0.95, eye_h * 0.95), iris)
        _ellipse(canvas, (eye_x, eye_y), (eye_h * 0.45, eye_h * 0.45), (15, 15, 15))
        _ellipse(
            canvas,
            (eye_x, eye_y - brow_lift),
            (eye_w * 1.1, eye_h * 0.8),
            hair,
            arc=(200, 340),
            thickness=brow_thickness,
        )
    nose_shadow = np.clip(skin * 0.8, 0, 255)
    nose_y = centre_y + half_height * rng.uniform(0.1, 0.2)
    _ellipse(canvas, (centre_x, nose_y), (half_width * 0.09, half_width * 0.05), nose_shadow)
    mouth_y = centre_y + half_height * rng.uniform(0.42, 0.55)
    mouth_w = half_width * rng.uniform(0.3, 0.45)
    _ellipse(
        canvas,
        (centre_x, mouth_y),
        (mouth_w, mouth_w * rng.uniform(0.18, 0.35)),
        _jitter(rng, LIP_COLOURS, 10.0),
    )
    return canvas


def _pattern(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soft stripes at a random angle and period over a gradient, plus one to three flat shapes."""
    angle = rng.uniform(0, np.pi)
    periods = rng.uniform(2, 5)
    # A clipped sine of the ramp: flat bands with soft edges, continuous across any hole.
    phase = 2 * np.pi * periods * _ramp(size, angle) + rng.uniform(0, 2 * np.pi)
    stripe_weight = np.clip(np.sin(phase) * 1.25 + 0.5, 0, 1).astype(np.float32)
    stripes = np.empty((size, size, 3), np.uint8)
    stripes[:] = rng.uniform(20, 235, 3).astype(np.uint8)
    canvas = cv2.blendLinear(stripes, _gradient(rng, size), stripe_weight, 1 - stripe_weight)
    for _ in range(rng.integers(1, 4)):
        colour = rng.uniform(0, 255, 3)
        centre = (size * rng.uniform(0.2, 0.8), size * rng.uniform(0.2, 0.8))
        radius = size * rng.uniform(0.08, 0.2)
        if rng.random() < 0.5:
            _ellipse(
                canvas,
                centre,
                (radius, radius * rng.uniform(0.6, 1.0)),
                colour,
                angle=rng.uniform(0, 180),
            )
        else:
            corners = cv2.boxPoints((centre, (2 * radius, 1.4 * radius), rng.uniform(0, 90)))
            fixed = np.round(corners * (1 << SUBPIXEL_BITS)).astype(np.int32)
            cv2.fillPoly(
                canvas, [fixed], tuple(float(c) for c in colour), cv2.LINE_AA, SUBPIXEL_BITS
            )
    return canvas


def draw(index: int, seed: int, size: int) -> np.ndarray:
    """Synthetic image `index` of `seed`: [size, size, 3] uint8 RGB, about 4 in 5 of them faces."""
    rng = np.random.default_rng([seed, index])
    image = _face(rng, size) if rng.random() < FACE_SHARE else _pattern(rng, size)
    # A slight blur, as a camera gives; a box filter costs a tenth of a Gaussian of the same width.
    radius = round(size * BLUR_SHARE)
    return cv2.blur(image, (2 * radius + 1, 2 * radius + 1)) if radius else image
