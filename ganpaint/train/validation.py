"""The fixed validation batch: image grids and hole PSNR against the net's own hole fill, in training.

The same images and holes are used at every tick (and after a resume), so the curves compare
like with like. The baseline is the fill the net's input gets (model.hole_fill: the mean colour or
zero), named after it. The nets run unwrapped and in eval mode on rank 0 only (no collective).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.utils import make_grid

from ganpaint.completion import complete, fill_holes
from ganpaint.config import TrainConfig
from ganpaint.data.masks import hole_generator, make_holes
from ganpaint.data.stream import held_out_split, val_batch
from ganpaint.errors import UserError
from ganpaint.eval.metrics import psnr
from ganpaint.models.layers import evaluating
from ganpaint.train.steps import StepSettings

VALIDATION_SEED_OFFSET = 7919  # keeps validation holes apart from any training step's holes


@dataclass
class ValidationSet:
    images: torch.Tensor  # [N,3,H,W] float in [0,1]
    hole_mask: torch.Tensor  # [N,1,H,W]
    latent: torch.Tensor  # generation families: fixed z [N, latent_dim]
    split: str = "val"  # the shard split the images come from
    fill_name: str = "mean"  # model.hole_fill: names the baseline's scalar
    tokens: torch.Tensor | None = None  # caption families: each image's first caption [N, T]


def load_validation_set(config: TrainConfig, device: torch.device) -> ValidationSet:
    """The fixed batch (data.val_images >= 1); UserError (one line) if no image of the split
    decodes."""
    split = held_out_split(config.data.shards, config.data.val_split)
    loaded, tokens = val_batch(config.data, config.data.val_images, split), None
    if config.data.captions:
        loaded, tokens = loaded[0], loaded[1].to(device)
    images = loaded.to(device).float() / 255
    count = images.shape[0]
    if not count:
        raise UserError(
            f"{config.data.shards}: no image of split {split!r} decodes: re-pack "
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
    return ValidationSet(
        images, holes.hole_mask, latent, split, config.model.hole_fill, tokens=tokens
    )


@torch.no_grad()
def run_validation(
    generator: nn.Module, settings: StepSettings, validation: ValidationSet
) -> tuple[dict[str, float], torch.Tensor]:
    """(scalars, grid): hole PSNR of the net ("val/hole_psnr") and of its hole fill alone
    (`baseline_key`), and for caption families of the net given another image's caption
    ("val/hole_psnr_shuffled_caption"); rows original | input | output | composited (inpainting)
    or a grid of fixed-latent samples (generation families)."""
    fill_rgb, centre = settings.fill_rgb, settings.family.predicts_center
    images, hole_mask, tokens = validation.images, validation.hole_mask, validation.tokens
    with evaluating(generator):
        if not settings.family.inpaints:
            samples = generator(validation.latent).float()
            return {}, make_grid(samples, nrow=8)
        prediction, completed = complete(generator, images, hole_mask, fill_rgb, centre, tokens)
        masked_input = fill_holes(images, hole_mask, fill_rgb)
        # The same hole PSNR as `ganpaint eval` (per image over its hole, then the mean).
        scalars = {
            "val/hole_psnr": float(psnr(completed, images, hole_mask).mean()),
            baseline_key(validation.fill_name): float(psnr(masked_input, images, hole_mask).mean()),
        }
        if tokens is not None:  # each image gets the next one's caption
            shuffled = complete(generator, images, hole_mask, fill_rgb, centre, tokens.roll(1, 0))
            scalars["val/hole_psnr_shuffled_caption"] = float(
                psnr(shuffled[1], images, hole_mask).mean()
            )
    rows = torch.cat([images, masked_input, prediction.float(), completed.float()])
    return scalars, make_grid(rows, nrow=images.shape[0])


def baseline_key(fill_name: str) -> str:
    """The scalar of the fill-only baseline: val/hole_psnr_mean_fill, val/hole_psnr_zero_fill."""
    return f"val/hole_psnr_{fill_name}_fill"
