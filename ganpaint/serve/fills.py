"""What the page's Fill button runs: decode the upload, fill its holes with the model and with the
classical fills (Telea, pyramid, harmonic, biharmonic, tension) on the same windows, time each, and return PNGs.

No web code here: the app hands bytes in and gets a FillResult (or a UserError) back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ganpaint.completion import biharmonic_fill, harmonic_fill, pyramid_fill, tension_fill
from ganpaint.errors import UserError
from ganpaint.eval.baselines import telea_inpaint_uint8
from ganpaint.eval.runs import open_model
from ganpaint.export import Exported
from ganpaint.images import decode_image, encode_image
from ganpaint.inpaint import WindowFill, fill_pixels, hole_from_mask, model_fill, tensor_to_uint8
from ganpaint.windows import NetGeometry, Window, net_geometry, plan_windows

PHOTO, MASK = "the photo", "the painted mask"


@dataclass
class ServedModel:
    name: str  # the --run path as given: what the page lists
    exported: Exported
    geometry: NetGeometry

    def describe(self) -> dict:
        config = self.exported.config
        return {
            "name": self.name,
            "family": config.model.family,
            "step": self.exported.step,
            "conditioning": self.exported.conditioning,
            "image_px": config.data.image_px,
            "hole_px": [config.masks.hole_min_px, config.masks.hole_max_px],
        }


def load_models(runs: list[str], device: torch.device) -> list[ServedModel]:
    """Open every --run (UserError naming the first that is not an inpainting model)."""
    if len(set(runs)) != len(runs):
        raise UserError("--run: the same run is given twice")
    models = []
    for run in runs:
        exported = open_model(Path(run), device, inpainting=True)
        models.append(ServedModel(run, exported, net_geometry(exported)))
    return models


def telea_window(rgb: np.ndarray, hole: np.ndarray, window: Window) -> np.ndarray:
    box = window.inside(*hole.shape)
    return telea_inpaint_uint8(rgb[box], hole[box])


def _smooth_window(fill: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> WindowFill:
    """A tensor fill (pyramid, harmonic, biharmonic, tension) run on one window of the photo."""

    def run(rgb: np.ndarray, hole: np.ndarray, window: Window) -> np.ndarray:
        box = window.inside(*hole.shape)
        image = torch.from_numpy(rgb[box]).permute(2, 0, 1)[None].float() / 255
        hole_mask = torch.from_numpy(hole[box])[None, None].float()
        return tensor_to_uint8(fill(image, hole_mask))

    return run


pyramid_window = _smooth_window(pyramid_fill)
harmonic_window = _smooth_window(harmonic_fill)
biharmonic_window = _smooth_window(biharmonic_fill)
tension_window = _smooth_window(tension_fill)


@dataclass
class FillResult:
    width: int
    height: int
    windows: list[Window]
    images: dict[str, bytes] = field(default_factory=dict)  # fill name -> PNG
    timings_ms: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "windows": [
                {"box": [w.top, w.bottom, w.left, w.right], "scale": round(w.scale, 4)}
                for w in self.windows
            ],
            "timings_ms": {name: round(ms, 1) for name, ms in self.timings_ms.items()},
        }


def read_upload(image: bytes, mask: bytes, max_megapixels: float) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, bool hole) from the uploaded photo and the page's white-on-black mask PNG.

    A photo with an EXIF rotation is turned upright, as the browser showed it to the painter.
    """
    pixels = decode_image(image, PHOTO, max_megapixels, upright=True)
    grey = decode_image(mask, MASK, max_megapixels, cv2.IMREAD_GRAYSCALE)
    height, width = pixels.shape[:2]
    hole = hole_from_mask(grey, height, width, MASK)
    if not hole.any():
        raise UserError("no hole painted: brush over the part of the photo to fill, then Fill")
    if hole.all():
        raise UserError("the whole photo is painted: leave some of it unpainted as context")
    return pixels, hole


def fill_upload(
    model: ServedModel,
    image: bytes,
    mask: bytes,
    caption: str | None,
    max_megapixels: float,
) -> FillResult:
    """The model's fill (Poisson-blended, as `ganpaint inpaint`) beside Telea, the pyramid, the
    harmonic, the biharmonic and the tension fill."""
    pixels, hole = read_upload(image, mask, max_megapixels)
    started = time.perf_counter()
    windows = plan_windows(hole, model.geometry, PHOTO)
    planning_ms = (time.perf_counter() - started) * 1000
    result = FillResult(pixels.shape[1], pixels.shape[0], windows)
    fills: dict[str, WindowFill] = {
        "model": model_fill(model.exported, "poisson", PHOTO, caption),
        "telea": telea_window,
        "pyramid": pyramid_window,
        "harmonic": harmonic_window,
        "biharmonic": biharmonic_window,
        "tension": tension_window,
    }
    for name, fill in fills.items():  # each time includes planning the windows it runs on
        started = time.perf_counter()
        filled = fill_pixels(pixels, hole, windows, fill)
        result.timings_ms[name] = (time.perf_counter() - started) * 1000 + planning_ms
        result.images[name] = encode_image(filled, ".png", PHOTO)
    return result
