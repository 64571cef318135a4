"""The family registry: every model family's declaration, in one table, and the lookups on it.

| family            | generator(...) -> output                                    | discriminator(...) -> [N]      |
|-------------------|-------------------------------------------------------------|--------------------------------|
| glcic             | (image_filled [N,3,H,W], hole_mask [N,1,H,W]) -> [N,3,H,W]  | (image, local_patch [N,3,L,L]) |
| context_encoder   | (image_filled [N,3,S,S], hole_mask) -> centre [N,3,S/2,S/2] | (centre patch) logits          |
| wgan_unet         | (image_filled [N,3,S,S], hole_mask) -> centre [N,3,S/2,S/2] | (centre patch) critic scores   |
| wgan_unet_caption | (image_filled, hole_mask, tokens [N,T]) -> centre           | (centre patch, tokens) scores  |
| dcgan             | (z [N, latent_dim]) -> [N,3,64,64]                          | (image [N,3,64,64]) logits     |

Images are float RGB in [0, 1]; hole_mask is 1 in the hole; tokens are a caption's word ids. To add a family: write its nets in a
module of ganpaint/models/, declare a `Family` for it below (or `register(...)` it from your own
code), and add a preset in configs/. Nothing else in ganpaint names a family.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ganpaint.errors import UserError
from ganpaint.models.caption import CaptionCritic, CaptionUNet
from ganpaint.models.context_encoder import ContextEncoder
from ganpaint.models.dcgan import DCGANGenerator
from ganpaint.models.family import Family, Nets, PhasePlan, StepKind
from ganpaint.models.glcic import PAPER_DILATIONS, CompletionNet, GLCICDiscriminator
from ganpaint.models.layers import StridedDiscriminator
from ganpaint.models.residual import ResidualGenerator
from ganpaint.models.wgan_unet import WGANCritic, WGANUNet

if TYPE_CHECKING:
    from ganpaint.config import ModelConfig, TrainConfig

_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (or replace one of the same name); returns it."""
    _FAMILIES[family.name] = family
    return family


def names() -> tuple[str, ...]:
    return tuple(_FAMILIES)


def get(name: str) -> Family:
    """The family called `name`; a one-line error naming the known ones otherwise."""
    try:
        return _FAMILIES[name]
    except KeyError:
        known = ", ".join(_FAMILIES)
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


# Geometry rules, each raising ConfigError with the key to change.


def _config_error(message: str) -> Exception:
    from ganpaint.config import ConfigError  # config imports this module lazily, and vice versa

    return ConfigError(message)


def _glcic_rules(config: TrainConfig) -> None:
    if config.masks.local_px % 16:
        raise _config_error(
            f"config key 'masks.local_px': must be a multiple of 16, got {config.masks.local_px}"
        )
    dilations = list(config.model.dilations)
    if len(dilations) != len(PAPER_DILATIONS) or min(dilations) < 1:
        raise _config_error(
            f"config key 'model.dilations': need {len(PAPER_DILATIONS)} rates >= 1 (the completion "
            f"net's dilated rows), got {dilations}"
        )


def _centre_rules(config: TrainConfig) -> None:
    """Centre-square predictors: the net predicts the centre half of the image (local_px), the
    hole is that square, or that square less a band of loss.overlap_px (Context Encoders)."""
    masks, image_px, family = config.masks, config.data.image_px, config.model.family
    overlap_px = config.loss.overlap_px
    if masks.kind != "center":
        raise _config_error(f"config key 'masks.kind': {family} predicts the centre; use 'center'")
    if masks.local_px * 2 != image_px or masks.hole_max_px != masks.local_px - 2 * overlap_px:
        raise _config_error(
            f"config key 'masks.local_px': {family} needs local_px = image_px / 2 = "
            f"hole_max_px + 2 * loss.overlap_px, got local_px={masks.local_px}, "
            f"image_px={image_px}, hole_max_px={masks.hole_max_px}, overlap_px={overlap_px}"
        )


def _dcgan_rules(config: TrainConfig) -> None:
    if config.data.image_px != 64:
        raise _config_error(
            f"config key 'data.image_px': dcgan generates 64 px images, got {config.data.image_px}"
        )


JOINT = (PhasePlan("joint", StepKind.ADVERSARIAL),)

register(
    Family(
        name="glcic",
        summary="Iizuka et al. 2017: dilated completion net, global + local discriminators",
        build=lambda model, image_px, local_px: Nets(
            CompletionNet(model.width, model.dilations),
            GLCICDiscriminator(image_px, local_px, model.disc_width, model.fc_features),
        ),
        # Paper Sec. 3.3: C alone for Tc, D alone for Td, then jointly until T.
        phases=(
            PhasePlan("completion", StepKind.COMPLETION, "completion_steps"),
            PhasePlan("discriminator", StepKind.DISCRIMINATOR, "discriminator_steps"),
            PhasePlan("joint", StepKind.ADVERSARIAL),
        ),
        judges_whole_image=True,
        dilated=True,
        check=_glcic_rules,
    )
)
register(
    Family(
        name="context_encoder",
        summary="Pathak et al. 2016: encoder-decoder predicting the centre, DCGAN-style D",
        build=lambda model, image_px, local_px: Nets(
            ContextEncoder(image_px, local_px, model.width),
            StridedDiscriminator(local_px, model.disc_width),
        ),
        phases=JOINT,
        predicts_center=True,
        check=_centre_rules,
    )
)
register(
    Family(
        name="wgan_unet",
        summary="64 px COCO centre-hole U-Net with a weight-clipped WGAN critic",
        build=lambda model, image_px, local_px: Nets(
            WGANUNet(image_px, model.width), WGANCritic(local_px, model.disc_width)
        ),
        phases=(PhasePlan("joint", StepKind.CRITIC),),
        predicts_center=True,
        check=_centre_rules,
    )
)
register(
    Family(
        name="wgan_unet_caption",
        summary="wgan_unet conditioned on COCO captions (text encoder trained from scratch)",
        build=lambda model, image_px, local_px: Nets(
            CaptionUNet(image_px, model.width, model.vocabulary_size),
            CaptionCritic(local_px, model.disc_width, model.vocabulary_size),
        ),
        phases=(PhasePlan("joint", StepKind.CRITIC),),
        predicts_center=True,
        captions=True,
        check=_centre_rules,
    )
)
register(
    Family(
        name="dcgan",
        summary="Radford et al.: 64 px face generation from z",
        build=lambda model, image_px, local_px: Nets(
            DCGANGenerator(model.latent_dim, model.width),
            StridedDiscriminator(64, model.disc_width),
        ),
        phases=(PhasePlan("joint", StepKind.GENERATION),),
        inpaints=False,
        check=_dcgan_rules,
    )
)
