"""The family registry: the list of model families, the lookups on it, and the builders for any one.

| family            | generator(...) -> output                                    | discriminator(...) -> [N]      |
|-------------------|-------------------------------------------------------------|--------------------------------|
| glcic             | (image_filled [N,3,H,W], hole_mask [N,1,H,W]) -> [N,3,H,W]  | (image, local_patch [N,3,L,L]) |
| context_encoder   | (image_filled [N,3,S,S], hole_mask) -> centre [N,3,S/2,S/2] | (centre patch) logits          |
| wgan_unet         | (image_filled [N,3,S,S], hole_mask) -> centre [N,3,S/2,S/2] | (centre patch) critic scores   |
| wgan_unet_caption | (image_filled, hole_mask, tokens [N,T]) -> centre           | (centre patch, tokens) scores  |
| dcgan             | (z [N, latent_dim]) -> [N,3,64,64]                          | (image [N,3,64,64]) logits     |

Images are float RGB in [0, 1]; hole_mask is 1 in the hole; tokens are a caption's word ids. Each
family is declared in the module of its nets (`FAMILY = Family(...)`, the fields in
ganpaint/models/family.py) and listed in FAMILIES; `register(family)` adds one from elsewhere (a
plugin, a test). Registering also gives the config schema the family's own settings and rules.
Nothing else in ganpaint names a family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ganpaint import config as config_lib
from ganpaint.errors import UserError
from ganpaint.models import caption, context_encoder, dcgan, glcic, wgan_unet
from ganpaint.models.family import Family, Nets
from ganpaint.models.residual import ResidualGenerator

if TYPE_CHECKING:
    from ganpaint.config import ModelConfig

FAMILIES = (glcic.FAMILY, context_encoder.FAMILY, wgan_unet.FAMILY, caption.FAMILY, dcgan.FAMILY)

_BY_NAME: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (or replace one of the same name), its settings and rules to the config
    schema as well; returns it."""
    config_lib.register_family(family.name, family.settings(), family.validate)
    _BY_NAME[family.name] = family
    return family


def unregister(name: str) -> None:
    """Forget a family added by `register` (a test's, once it is done)."""
    _BY_NAME.pop(name, None)
    config_lib.unregister_family(name)


def names() -> tuple[str, ...]:
    return tuple(_BY_NAME)


def get(name: str) -> Family:
    """The family called `name`; a one-line error naming the known ones otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(_BY_NAME)
        raise UserError(f"unknown model family {name!r}: known families are {known}") from None


def build_nets(model: ModelConfig, image_px: int, local_px: int) -> Nets:
    """Both networks of `model.family`, freshly initialised, on the CPU, in train mode; with
    `model.residual` the generator corrects its filled input (`ResidualGenerator`)."""
    nets = get(model.family).build(model, image_px, local_px)
    if model.residual:
        return Nets(ResidualGenerator(nets.generator), nets.discriminator)
    return nets


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
    family = get(model.family)
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device)

    image = rand(batch, 3, image_px, image_px)
    tokens = None
    if family.captions:  # a caption of 12 words drawn from the vocabulary
        tokens = torch.randint(
            2, model.vocabulary_size, (batch, 12), generator=generator, device=device
        )
    if not family.inpaints:
        z = torch.randn(batch, model.latent_dim, generator=generator, device=device)
        return (z,), family.judge_inputs(image, None, tokens)
    hole_mask = torch.zeros(batch, 1, image_px, image_px, device=device)
    start = (image_px - local_px) // 2
    hole_mask[..., start : start + local_px, start : start + local_px] = 1
    patch = rand(batch, 3, local_px, local_px)
    captions = (tokens,) if family.captions else ()
    return (image, hole_mask, *captions), family.judge_inputs(image, patch, tokens)


for _family in FAMILIES:
    register(_family)
