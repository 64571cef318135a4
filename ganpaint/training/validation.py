"""The fixed validation batch: image grids, and hole PSNR / SSIM beside the classical fills, in training.

The same images and holes are used at every tick (and after a resume), so the curves compare
like with like. The classical fills (`eval.baselines`: mean, Telea, pyramid, harmonic, biharmonic,
tension) are scored once, on the same holes, and logged at every tick beside the net, as
`ganpaint eval` reports them. The nets run unwrapped and in eval mode on rank 0 only (no collective).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn
from torchvision.utils import make_grid

from ganpaint.baselines import classical_fills
from ganpaint.completion import complete
from ganpaint.config import TrainConfig
from ganpaint.data.masks import hole_generator, make_holes
from ganpaint.data.remote import mask
from ganpaint.data.stream import held_out_split, val_batch
from ganpaint.errors import UserError
from ganpaint.eval.metrics import psnr, ssim
from ganpaint.models import Family
from ganpaint.models.layers import evaluating
from ganpaint.training.steps import StepSettings

VALIDATION_SEED_OFFSET = 7919  # keeps validation holes apart from any training step's holes


@dataclass
class ValidationSet:
    images: torch.Tensor  # [N,3,H,W] float in [0,1]
    hole_mask: torch.Tensor  # [N,1,H,W]
    latent: torch.Tensor | None  # generation families: fixed z [N, model.latent_dim]
    split: str = "val"  # the shard split the images come from
    tokens: torch.Tensor | None = None  # caption families: each image's first caption [N, T]
    # inpainting families: the classical fills' scores on these holes ({method: {metric: value}})
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)


def hole_scores(
    completed: torch.Tensor, images: torch.Tensor, hole_mask: torch.Tensor
) -> dict[str, float]:
    """The same hole PSNR and SSIM as `ganpaint eval` (per image over its hole, then the mean)."""
    return {
        "hole_psnr": float(psnr(completed, images, hole_mask).mean()),
        "hole_ssim": float(ssim(completed.clamp(0, 1), images, hole_mask).mean()),
    }


def load_validation_set(
    config: TrainConfig, family: Family, device: torch.device, mean_rgb: torch.Tensor
) -> ValidationSet:
    """The fixed batch (data.val_images >= 1) and, for inpainting families, the classical fills'
    scores on it (`mean_rgb`: the mean fill's colour, [3] in [0, 1]); UserError (one line) if no
    image of the split decodes."""
    data = config.data
    if data.val_shards:  # validation images from their own shard directory
        data = dataclasses.replace(data, shards=data.val_shards)
    split = held_out_split(data.shards, data.val_split)
    loaded, tokens = val_batch(data, data.val_images, split), None
    if config.data.captions:
        loaded, tokens = loaded[0], loaded[1].to(device)
    images = loaded.to(device).float() / 255
    count = images.shape[0]
    if not count:
        raise UserError(
            f"{mask(data.shards)}: no image of split {split!r} decodes: re-pack "
            "the shards, name another data.val_split, or set data.val_images=0 (no validation)"
        )
    seed = config.run.seed + VALIDATION_SEED_OFFSET
    holes = make_holes(
        config.masks, count, config.data.image_px, hole_generator(seed, 0, 0, device), device
    )
    latent, baselines = None, {}
    if family.inpaints:
        fills = classical_fills(images, holes.hole_mask, mean_rgb)
        baselines = {
            name: hole_scores(filled, images, holes.hole_mask) for name, filled in fills.items()
        }
    else:  # a generation family: fixed latents of its model.latent_dim
        latent = torch.randn(
            count,
            config.model.latent_dim,
            generator=torch.Generator(device).manual_seed(seed),
            device=device,
        )
    return ValidationSet(images, holes.hole_mask, latent, split, tokens, baselines)


@torch.no_grad()
def run_validation(
    generator: nn.Module, settings: StepSettings, validation: ValidationSet
) -> tuple[dict[str, float], torch.Tensor]:
    """(scalars, grid): hole PSNR and SSIM of the net ("val/hole_psnr", "val/hole_ssim") and of
    each classical fill ("val/hole_psnr_telea", ...), and for caption families of the net given
    another image's caption ("val/hole_psnr_shuffled_caption"); rows original | input | output |
    composited (inpainting) or a grid of fixed-latent samples (generation families)."""
    hole_fill, centre = settings.hole_fill, settings.family.predicts_center
    images, hole_mask, tokens = validation.images, validation.hole_mask, validation.tokens
    with evaluating(generator):
        if not settings.family.inpaints:
            samples = generator(validation.latent).float()
            return {}, make_grid(samples, nrow=8)
        masked_input = hole_fill(images, hole_mask)  # once: the net's input and the grid's row
        prediction, completed = complete(
            generator, images, hole_mask, hole_fill, centre, tokens, masked_input
        )
        scalars = {
            f"val/{metric}": value
            for metric, value in hole_scores(completed, images, hole_mask).items()
        }
        for name, scores in validation.baselines.items():
            scalars |= {f"val/{metric}_{name}": value for metric, value in scores.items()}
        if tokens is not None:  # each image gets the previous one's caption (roll by 1)
            other = tokens.roll(1, 0)
            shuffled = complete(
                generator, images, hole_mask, hole_fill, centre, other, masked_input
            )
            scalars["val/hole_psnr_shuffled_caption"] = float(
                psnr(shuffled[1], images, hole_mask).mean()
            )
    rows = torch.cat([images, masked_input, prediction.float(), completed.float()])
    return scalars, make_grid(rows, nrow=images.shape[0])


def versus_baselines(scalars: dict[str, float], validation: ValidationSet) -> dict[str, dict]:
    """`run_validation`'s scalars as {method: {metric: value}}, the shape `versus_best` reads."""
    return {"model": {key: scalars[f"val/{key}"] for key in ("hole_psnr", "hole_ssim")}} | (
        validation.baselines
    )
