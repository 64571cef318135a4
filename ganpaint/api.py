"""The small public API: train a config, load a trained model, inpaint an image with it.

    import ganpaint
    run_dir = ganpaint.train("demo", ["schedule.total_steps=200"])
    model = ganpaint.load(run_dir)                     # or RUN/export/generator.safetensors
    filled = ganpaint.inpaint(model, rgb, hole)        # uint8 [H, W, 3] RGB, bool [H, W]

Each is what the console script runs, with Python values instead of files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ganpaint.errors import UserError


def train(config, overrides: list[str] | tuple[str, ...] = ()) -> Path:
    """Train a preset name, a YAML path or a `TrainConfig` (with dotted.key=value overrides) in
    this process; resumes like the console script. Returns the run directory."""
    from ganpaint import config as config_lib
    from ganpaint.training.loop import train as train_loop

    if not isinstance(config, config_lib.TrainConfig):
        config = config_lib.load(config, list(overrides))
    elif overrides:
        raise UserError("overrides apply to a preset or YAML path, not to a TrainConfig")
    return train_loop(config)


def load(path: str | Path, device: str = "auto"):
    """The exported generator of a run directory or an export file, as an `Exported`: its
    `.generator`, `.config`, `.family` and `.complete(images, hole_mask)` for batched tensors."""
    from ganpaint.infer.export import load_generator
    from ganpaint.infer.runs import resolve_device

    return load_generator(path, resolve_device(device))


def inpaint(
    model,
    image: np.ndarray,
    hole: np.ndarray,
    blend: str = "poisson",
    caption: str | None = None,
) -> np.ndarray:
    """Fill `hole` (bool [H, W], True = fill) of `image` (uint8 RGB [H, W, 3], any size) with
    `model` (from `load`, or a path to load). Pixels outside the hole come back unchanged."""
    from ganpaint.infer.inpaint import check_hole, inpaint_pixels

    if isinstance(model, str | Path):
        model = load(model)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"image: expected uint8 RGB [H, W, 3], got {image.dtype} {image.shape}")
    if hole.shape != image.shape[:2]:
        raise UserError(
            f"hole: expected bool [{image.shape[0]}, {image.shape[1]}], got {hole.shape}"
        )
    hole = hole.astype(bool)
    check_hole(hole, "hole")
    bgr = np.ascontiguousarray(image[..., ::-1])
    filled = inpaint_pixels(model, bgr, hole, blend, "image", caption)
    return np.ascontiguousarray(filled[..., ::-1])
