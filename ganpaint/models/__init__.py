"""The model zoo: one generator and one discriminator per family, built from the model config.

| family          | generator(...) -> output                                  | discriminator(...) -> [N]       |
|-----------------|-----------------------------------------------------------|---------------------------------|
| glcic           | (image_filled [N,3,H,W], hole_mask [N,1,H,W]) -> [N,3,H,W] | (image, local_patch [N,3,L,L])  |
| context_encoder | (image_filled [N,3,S,S], hole_mask) -> centre [N,3,S/2,S/2] | (centre patch) logits          |
| wgan_unet       | (image_filled [N,3,S,S], hole_mask) -> centre [N,3,S/2,S/2] | (centre patch) critic scores   |
| dcgan           | (z [N, latent_dim]) -> [N,3,64,64]                         | (image [N,3,64,64]) logits      |

Images are float RGB in [0, 1]; hole_mask is 1 in the hole. Generators carry `predicts_center`
(True when they return only the centre square, which the caller pastes into the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ganpaint.config import ModelConfig
from ganpaint.models.context_encoder import ContextEncoder
from ganpaint.models.dcgan import DCGANGenerator
from ganpaint.models.glcic import CompletionNet, GLCICDiscriminator
from ganpaint.models.layers import StridedDiscriminator
from ganpaint.models.wgan_unet import WGANUNet


@dataclass
class Nets:
    generator: nn.Module
    discriminator: nn.Module


def build_nets(model: ModelConfig, image_px: int, local_px: int) -> Nets:
    """Both networks of `model.family`, freshly initialised, on the CPU, in train mode.

    image_px is the training crop; local_px the GLCIC local area, or the predicted centre
    (= image_px / 2) for context_encoder and wgan_unet; dcgan ignores both (64 px).
    """
    if model.family == "glcic":
        return Nets(
            CompletionNet(model.width, model.dilations, model.residual),
            GLCICDiscriminator(image_px, local_px, model.disc_width, model.fc_features),
        )
    if model.family == "context_encoder":
        return Nets(
            ContextEncoder(image_px, local_px, model.width, model.residual),
            StridedDiscriminator(local_px, model.disc_width),
        )
    if model.family == "wgan_unet":
        return Nets(
            WGANUNet(image_px, model.width, model.residual),
            StridedDiscriminator(local_px, model.disc_width),
        )
    if model.family == "dcgan":
        return Nets(
            DCGANGenerator(model.latent_dim, model.width),
            StridedDiscriminator(64, model.disc_width),
        )
    raise ValueError(f"unknown model family {model.family!r}")


def example_inputs(
    model: ModelConfig,
    image_px: int,
    local_px: int,
    batch: int = 1,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Random inputs of the right shapes: (generator inputs, discriminator inputs).

    For shape checks, FLOP counts and benchmarks; the hole is the centre local_px square.
    """
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    if model.family == "dcgan":
        z = torch.randn(batch, model.latent_dim, generator=generator, device=device)
        return (z,), (rand(batch, 3, 64, 64),)
    hole_mask = torch.zeros(batch, 1, image_px, image_px, device=device)
    start = (image_px - local_px) // 2
    hole_mask[..., start : start + local_px, start : start + local_px] = 1
    image = rand(batch, 3, image_px, image_px)
    if model.family == "glcic":
        return (image, hole_mask), (image, rand(batch, 3, local_px, local_px))
    return (image, hole_mask), (rand(batch, 3, local_px, local_px),)


__all__ = ["Nets", "build_nets", "example_inputs"]
