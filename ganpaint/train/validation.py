"""The fixed validation batch: image grids and hole PSNR / SSIM against the classical fills, in training.

The same images and holes are used at every tick (and after a resume), so the curves compare
like with like. The nets run unwrapped and in eval mode on rank 0 only, which needs no collective.
The baselines (`eval.baselines.classical_fills`) are scored once, on the first tick.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.utils import make_grid

from ganpaint.completion import complete, prefill
from ganpaint.config import TrainConfig
from ganpaint.data.masks import hole_generator, make_holes
from ganpaint.data.stream import val_batch
from ganpaint.eval.baselines import classical_fills, constant_fill_name
from ganpaint.eval.metrics import psnr, ssim
from ganpaint.models.layers import evaluating

VALIDATION_SEED_OFFSET = 7919  # keeps validation holes apart from any training step's holes


@dataclass
class ValidationSet:
    images: torch.Tensor  # [N,3,H,W] float in [0,1]
    hole_mask: torch.Tensor  # [N,1,H,W]
    latent: torch.Tensor  # dcgan: fixed z [N, latent_dim]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # scored on first use


def load_validation(config: TrainConfig, device: torch.device) -> ValidationSet:
    data = config.data
    if data.val_shards:
        data = dataclasses.replace(data, shards=data.val_shards)
    images = val_batch(data, data.val_images).to(device).float() / 255
    count = images.shape[0]
    seed = config.run.seed + VALIDATION_SEED_OFFSET
    holes = make_holes(
        config.masks, count, config.data.image_px, hole_generator(seed, 0, 0, device), device
    )
    latent = torch.randn(
        count,
        config.model.latent_dim,
        generator=torch.Generator(device).manual_seed(seed),
        device=device,
    )
    return ValidationSet(images, holes.hole_mask, latent)


def _scores(completed: torch.Tensor, images: torch.Tensor, hole_mask: torch.Tensor) -> dict:
    """The same hole PSNR and SSIM as `ganpaint eval` (per image over its hole, then the mean)."""
    return {
        "hole_psnr": float(psnr(completed, images, hole_mask).mean()),
        "hole_ssim": float(ssim(completed.clamp(0, 1), images, hole_mask).mean()),
    }


@torch.no_grad()
def validate(
    generator: nn.Module,
    family: str,
    fill_rgb: torch.Tensor,
    validation: ValidationSet,
    hole_fill: str = "mean",
) -> tuple[dict[str, float], torch.Tensor]:
    """(scalars, grid). Scalars: val/hole_psnr and val/hole_ssim of the net, val/<baseline>/...
    of each classical fill. Grid rows: original | net input | output | composited (inpainting),
    or a grid of fixed-latent samples (dcgan)."""
    with evaluating(generator):
        if family == "dcgan":
            samples = generator(validation.latent).float()
            return {}, make_grid(samples, nrow=8)
        images, hole_mask = validation.images, validation.hole_mask
        prediction, completed = complete(generator, images, hole_mask, fill_rgb, hole_fill)
        net_input = prefill(images, hole_mask, fill_rgb, hole_fill)
    if not validation.baselines:
        fills = classical_fills(images, hole_mask, fill_rgb, constant_fill_name(hole_fill))
        validation.baselines = {
            name: _scores(filled, images, hole_mask) for name, filled in fills.items()
        }
    scalars = {f"val/{key}": value for key, value in _scores(completed, images, hole_mask).items()}
    for name, scores in validation.baselines.items():
        scalars |= {f"val/{name}/{key}": value for key, value in scores.items()}
    rows = torch.cat([images, net_input, prediction.float(), completed.float()])
    return scalars, make_grid(rows, nrow=images.shape[0])


def results_from_scalars(scalars: dict[str, float]) -> dict[str, dict[str, float]]:
    """`validate`'s scalars as {method: {metric: value}}, the net as "model" (for versus_best)."""
    results: dict[str, dict[str, float]] = {}
    for key, value in scalars.items():
        parts = key.split("/")[1:]
        method, metric = ("model", parts[0]) if len(parts) == 1 else parts
        results.setdefault(method, {})[metric] = value
    return results
