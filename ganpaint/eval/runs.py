"""Opening a trained model for `eval`, `inpaint` and `sample`: the device choice and the family check."""

from __future__ import annotations

from pathlib import Path

import torch

from ganpaint.errors import UserError
from ganpaint.export import Exported, load_generator

INPAINTING_FAMILIES = ("glcic", "context_encoder", "wgan_unet")


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

    `inpainting` True: glcic, context_encoder or wgan_unet; False: dcgan. Raises UserError naming
    the path otherwise, or when nothing is exported there.
    """
    if not Path(path).exists():
        raise UserError(f"run directory or weights file not found: {path}")
    exported = load_generator(path, device)
    family = exported.config.model.family
    if inpainting and family not in INPAINTING_FAMILIES:
        raise UserError(
            f"{path}: a {family} model generates images and cannot inpaint (use `ganpaint sample`)"
        )
    if not inpainting and family != "dcgan":
        raise UserError(f"{path}: `ganpaint sample` needs a dcgan model, this one is {family}")
    return exported
