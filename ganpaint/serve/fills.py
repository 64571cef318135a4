"""What the page's Fill button runs: decode the upload, fill its holes with the model and with the
classical fills (Telea, pyramid, harmonic, biharmonic, tension) on the same windows, time each, and
return PNGs with notes on what was simplified.

No web code here: the app hands bytes in and gets a FillResult (or a UserError) back.

The harmonic, biharmonic and tension solvers cost the window's area per step, and their number
of steps grows with its side (ganpaint/completion.py), so a hole across an 800 px photo took
35-50 s and one across 1500 px 4-5 min. A window above SMOOTH_BUDGET_PX is solved on a reduced
grid instead: cropped to the hole and a ring of context, shrunk so that it holds SMOOTH_BUDGET_PX
pixels, solved, and the solution enlarged back into the hole; the answer carries a note saying
so. Smaller windows are solved as they always were.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional

from ganpaint.baselines import telea_inpaint_uint8
from ganpaint.completion import biharmonic_fill, harmonic_fill, pyramid_fill, tension_fill
from ganpaint.errors import UserError
from ganpaint.infer.export import GENERATOR_FILE, Exported
from ganpaint.infer.images import decode_image, encode_image
from ganpaint.infer.inpaint import (
    WARN_BELOW_SCALE,
    WindowFill,
    fill_pixels,
    hole_from_mask,
    model_fill,
    tensor_to_uint8,
)
from ganpaint.infer.runs import open_model
from ganpaint.infer.windows import NetGeometry, Window, net_geometry, plan_windows

PHOTO, MASK = "the photo", "the painted mask"
# The most pixels a smooth solve runs on: 256 x 256 costs about 0.5 s per CG solve on 2 cores.
SMOOTH_BUDGET_PX = 256 * 256
# Known pixels kept around the hole on the reduced grid: the biharmonic stencil reaches 2.
SMOOTH_CONTEXT_PX = 4
TensorFill = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ServedModel:
    name: str  # what the page lists and requests name: never a path (model_names)
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


def _run_parts(run: str) -> tuple[str, ...]:
    """The names on the way to a run's directory (RUN, RUN/export or RUN/export/generator file
    all give RUN's); a weights file elsewhere ends in its stem."""
    path = Path(run).resolve()
    if path.name == GENERATOR_FILE and path.parent.name == "export":
        path = path.parent
    if path.name == "export":
        path = path.parent
    parts = path.parts[1:]  # no root: answers never hold an absolute path
    return (*parts[:-1], path.stem) if path.is_file() else parts


def model_names(runs: list[str]) -> list[str]:
    """What the page lists for each --run: its directory's name, with as many parent directory
    names as it takes to tell the runs apart. UserError when two name the same run."""
    parts = [_run_parts(run) for run in runs]
    if len(set(parts)) != len(parts):
        raise UserError("--run: the same run is given twice")
    for depth in range(1, max(len(part) for part in parts) + 1):
        names = ["/".join(part[-depth:]) for part in parts]
        if len(set(names)) == len(names):
            return names
    return ["/".join(part) for part in parts]


def load_models(runs: list[str], device: torch.device) -> list[ServedModel]:
    """Open every --run (UserError naming the first that is not an inpainting model)."""
    names = model_names(runs)
    models = []
    for run, name in zip(runs, names, strict=True):
        exported = open_model(Path(run), device, inpainting=True)
        models.append(ServedModel(name, exported, net_geometry(exported)))
    return models


def telea_window(rgb: np.ndarray, hole: np.ndarray, window: Window) -> np.ndarray:
    box = window.inside(*hole.shape)
    return telea_inpaint_uint8(rgb[box], hole[box])


def _solve(fill: TensorFill, pixels: np.ndarray, hole: np.ndarray) -> torch.Tensor:
    """A tensor fill of uint8 RGB [h, w, 3] with bool hole [h, w]: [1, 3, h, w] in [0, 1]."""
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float() / 255
    hole_mask = torch.from_numpy(np.ascontiguousarray(hole))[None, None].float()
    return fill(image, hole_mask)


def reduced_box(hole: np.ndarray, budget_px: int) -> tuple[tuple[slice, slice], float]:
    """(rows, columns) of the hole's bounding box with SMOOTH_CONTEXT_PX of context at the
    reduced scale, and that scale (<= 1), at which the box holds at most budget_px pixels."""
    height, width = hole.shape
    rows, columns = np.flatnonzero(hole.any(1)), np.flatnonzero(hole.any(0))
    scale = 1.0
    for _ in range(2):  # the margin depends on the scale, the scale on the box's size
        margin = math.ceil(SMOOTH_CONTEXT_PX / scale)
        box = (
            slice(max(0, rows[0] - margin), min(height, rows[-1] + 1 + margin)),
            slice(max(0, columns[0] - margin), min(width, columns[-1] + 1 + margin)),
        )
        area = (box[0].stop - box[0].start) * (box[1].stop - box[1].start)
        scale = min(1.0, math.sqrt(budget_px / area))
    return box, scale


@dataclass
class SmoothWindowFill:
    """A smooth tensor fill run on one window of the photo (a WindowFill), on a reduced grid
    above budget_px pixels; `smallest_scale` records the smallest grid it used (1: none)."""

    fill: TensorFill
    budget_px: float = SMOOTH_BUDGET_PX
    smallest_scale: float = 1.0

    def __call__(self, rgb: np.ndarray, hole: np.ndarray, window: Window) -> np.ndarray:
        box = window.inside(*hole.shape)
        pixels, box_hole = rgb[box], hole[box]
        if box_hole.size <= self.budget_px:  # as it always was
            return tensor_to_uint8(_solve(self.fill, pixels, box_hole))
        (rows, columns), scale = reduced_box(box_hole, self.budget_px)
        crop, crop_hole = pixels[rows, columns], box_hole[rows, columns]
        solved_hole, size = crop_hole, (crop.shape[1], crop.shape[0])
        if scale < 1:
            small = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            crop = cv2.resize(crop, small, interpolation=cv2.INTER_AREA)
            # a cell holding any hole pixel is hole: nothing under the hole reaches the solve
            area = cv2.resize(crop_hole.astype(np.float32), small, interpolation=cv2.INTER_AREA)
            solved_hole = area > 0
            self.smallest_scale = min(self.smallest_scale, scale)
        filled = _solve(self.fill, crop, solved_hole)
        if scale < 1:
            filled = functional.interpolate(filled, size=size[::-1], mode="bilinear")
        result = pixels.copy()  # only the hole's pixels are read (WindowFill)
        result[rows, columns][crop_hole] = tensor_to_uint8(filled)[crop_hole]
        return result


def smooth_fills() -> dict[str, SmoothWindowFill]:
    """Fresh window fills of the pyramid, harmonic, biharmonic and tension fills. The pyramid
    fill costs a few passes over the window at any size: it is never reduced."""
    return {
        "pyramid": SmoothWindowFill(pyramid_fill, budget_px=math.inf),
        "harmonic": SmoothWindowFill(harmonic_fill),
        "biharmonic": SmoothWindowFill(biharmonic_fill),
        "tension": SmoothWindowFill(tension_fill),
    }


@dataclass
class FillResult:
    width: int
    height: int
    windows: list[Window]
    images: dict[str, bytes] = field(default_factory=dict)  # fill name -> PNG
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # one line each: what was simplified, and why

    def describe(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "windows": [
                {"box": [w.top, w.bottom, w.left, w.right], "scale": round(w.scale, 4)}
                for w in self.windows
            ],
            "timings_ms": {name: round(ms, 1) for name, ms in self.timings_ms.items()},
            "notes": self.notes,
        }


def read_upload(image: bytes, mask: bytes, max_megapixels: float) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, bool hole) from the uploaded photo and the page's white-on-black mask PNG.

    A photo with an EXIF rotation is turned upright, as the browser showed it to the painter.
    """
    pixels = decode_image(image, PHOTO, max_megapixels)
    grey = decode_image(mask, MASK, max_megapixels, cv2.IMREAD_GRAYSCALE)
    height, width = pixels.shape[:2]
    hole = hole_from_mask(grey, height, width, MASK)
    if not hole.any():
        raise UserError("no hole painted: brush over the part of the photo to fill, then Fill")
    if hole.all():
        raise UserError("the whole photo is painted: leave some of it unpainted as context")
    return pixels, hole


def _notes(model: ServedModel, windows: list[Window], smooth: dict[str, SmoothWindowFill]) -> list:
    notes = []
    smallest = min(window.scale for window in windows)
    if smallest < WARN_BELOW_SCALE:
        hole_max_px = model.exported.config.masks.hole_max_px
        notes.append(
            f"the hole is {1 / smallest:.1f}x the size of those the model was trained on "
            f"({hole_max_px} px): it filled it at its trained scale, so expect a blurred fill"
        )
    reduced = {
        name: fill.smallest_scale for name, fill in smooth.items() if fill.smallest_scale < 1
    }
    if reduced:
        scale = min(reduced.values())
        notes.append(
            f"the {', '.join(reduced)} fills were solved on a grid {1 / scale:.1f}x coarser than "
            f"the photo, to answer in seconds (a solve of more than {SMOOTH_BUDGET_PX:,} px "
            "around a hole takes tens of seconds): a preview of those fills"
        )
    return notes


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
    smooth = smooth_fills()
    fills: dict[str, WindowFill] = {
        "model": model_fill(model.exported, "poisson", PHOTO, caption),
        "telea": telea_window,
        **smooth,
    }
    for name, fill in fills.items():  # each time includes planning the windows it runs on
        started = time.perf_counter()
        filled = fill_pixels(pixels, hole, windows, fill)
        result.timings_ms[name] = (time.perf_counter() - started) * 1000 + planning_ms
        result.images[name] = encode_image(filled, ".png", PHOTO)
    result.notes = _notes(model, windows, smooth)
    return result
