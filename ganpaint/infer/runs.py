"""Opening a trained model for `eval`, `inpaint` and `sample`: the device choice and the family check."""

from __future__ import annotations

from pathlib import Path

import torch

from ganpaint.errors import UserError
from ganpaint.infer.export import Exported, load_generator


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; any other torch device name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device {name!r}: not a device name (auto, cpu, cuda, cuda:1, ...)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name!r}: CUDA is not available on this machine")
    return device


def open_model(path: str | Path, device: torch.device, inpainting: bool) -> Exported:
    """Load an exported generator and check it is the kind the command needs.

    `inpainting` True: a family that fills holes; False: one that generates from a latent. Raises
    UserError naming the path otherwise, or when nothing is exported there.
    """
    if not Path(path).exists():
        raise UserError(f"run directory or weights file not found: {path}")
    exported = load_generator(path, device)
    family = exported.family
    if inpainting and not family.inpaints:
        raise UserError(
            f"{path}: a {family.name} model generates images and cannot inpaint "
            "(use `ganpaint sample`)"
        )
    if not inpainting and family.inpaints:
        raise UserError(
            f"{path}: `ganpaint sample` needs a generation model (e.g. dcgan), this one is "
            f"{family.name}, which inpaints"
        )
    return exported
