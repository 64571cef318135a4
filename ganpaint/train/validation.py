"""The fixed validation batch: image grids and hole PSNR against the mean-fill baseline, in training.

The same images and holes are used at every tick (and after a resume), so the curves compare
like with like. The nets run unwrapped and in eval mode on rank 0 only, which needs no collective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.utils import make_grid

from ganpaint.completion import complete, fill_holes
from ganpaint.config import TrainConfig
from ganpaint.data.masks import hole_generator, make_holes
from ganpaint.data.stream import val_batch
from ganpaint.errors import UserError
from ganpaint.eval.metrics import psnr
from ganpaint.models.layers import evaluating
from ganpaint.train.steps import StepSettings

VALIDATION_SEED_OFFSET = 7919  # keeps validation holes apart from any training step's holes


@dataclass
class ValidationSet:
    images: torch.Tensor  # [N,3,H,W] float in [0,1]
    hole_mask: torch.Tensor  # [N,1,H,W]
    latent: torch.Tensor  # dcgan: fixed z [N, latent_dim]


def load_validation_set(config: TrainConfig, device: torch.device) -> ValidationSet:
    """The fixed batch (data.val_images >= 1); UserError (one line) if no image of the split
    decodes."""
    images = val_batch(config.data, config.data.val_images).to(device).float() / 255
    count = images.shape[0]
    if not count:
        raise UserError(
            f"{config.data.shards}: no image of split {config.data.val_split!r} decodes: re-pack "
            "the shards, name another data.val_split, or set data.val_images=0 (no validation)"
        )
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


@torch.no_grad()
def run_validation(
    generator: nn.Module, settings: StepSettings, validation: ValidationSet
) -> tuple[dict[str, float], torch.Tensor]:
    """(scalars, grid): hole PSNR of the net and of the mean fill; rows original | input | output |
    composited (inpainting) or a grid of fixed-latent samples (generation families)."""
    fill_rgb = settings.fill_rgb
    with evaluating(generator):
        if not settings.family.inpaints:
            samples = generator(validation.latent).float()
            return {}, make_grid(samples, nrow=8)
        images, hole_mask = validation.images, validation.hole_mask
        prediction, completed = complete(
            generator, images, hole_mask, fill_rgb, settings.family.predicts_center
        )
        masked_input = fill_holes(images, hole_mask, fill_rgb)
    # The same hole PSNR as `ganpaint eval` (per image over its hole, then the mean).
    scalars = {
        "val/hole_psnr": float(psnr(completed, images, hole_mask).mean()),
        "val/hole_psnr_mean_fill": float(psnr(masked_input, images, hole_mask).mean()),
    }
    rows = torch.cat([images, masked_input, prediction.float(), completed.float()])
    return scalars, make_grid(rows, nrow=images.shape[0])
