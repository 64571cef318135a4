"""`ganpaint sample`: a grid of DCGAN samples and rows of spherical latent interpolations.

Latents are drawn on the CPU from --seed, so a seed gives the same latents on any device.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ganpaint.errors import UserError
from ganpaint.infer.runs import open_model, resolve_device

INTERPOLATION_STEPS = 8  # images per interpolation row, both ends included
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def slerp(start: torch.Tensor, end: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between latents [K, D] at fractions [S] in [0, 1] -> [K, S, D].

    Gaussian latents live near a sphere; walking the great circle keeps their norm typical, where
    a straight line would pass through low-norm latents the generator never saw (White 2016).
    """
    cosine = torch.nn.functional.cosine_similarity(start, end, dim=1).clamp(-1, 1)
    angle = torch.acos(cosine)[:, None, None]  # [K, 1, 1]
    fractions = fractions[None, :, None]  # [1, S, 1]
    sin_angle = torch.sin(angle)
    # Nearly parallel latents: sin(angle) -> 0, and slerp tends to the straight line.
    parallel = sin_angle.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin_angle), sin_angle)
    start_weight = torch.where(parallel, 1 - fractions, torch.sin((1 - fractions) * angle) / safe)
    end_weight = torch.where(parallel, fractions, torch.sin(fractions * angle) / safe)
    return start_weight * start[:, None] + end_weight * end[:, None]


def sample_command(
    run: str, count: int, output: str, seed: int, interpolate: int, device: str
) -> int:
    """Write `count` samples as one PNG grid; with --interpolate K, K slerp rows beside it."""
    from torchvision.utils import save_image

    if count < 1:
        raise UserError(f"--count must be >= 1, got {count}")
    if interpolate < 0:
        raise UserError(f"--interpolate must be >= 0, got {interpolate}")
    output_path = Path(output)
    if output_path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"--output {output}: name an image file ({', '.join(IMAGE_SUFFIXES)})")
    torch_device = resolve_device(device)
    exported = open_model(run, torch_device, inpainting=False)
    latent_dim = exported.config.model.latent_dim
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(count, latent_dim, generator=generator)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        samples = exported.generator(latents.to(torch_device))
        save_image(samples.clamp(0, 1), output_path, nrow=math.ceil(math.sqrt(count)))
        print(f"{count} samples -> {output_path}")
        if interpolate:
            ends = torch.randn(2, interpolate, latent_dim, generator=generator)
            fractions = torch.linspace(0, 1, INTERPOLATION_STEPS)
            path = slerp(ends[0], ends[1], fractions).flatten(0, 1)  # [K * S, D], row by row
            frames = exported.generator(path.to(torch_device))
            interp_path = output_path.with_name(f"{output_path.stem}_interp{output_path.suffix}")
            save_image(frames.clamp(0, 1), interp_path, nrow=INTERPOLATION_STEPS)
            print(f"{interpolate} interpolations -> {interp_path}")
    return 0
