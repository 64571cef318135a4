"""WGAN U-Net (IFT-6266 MSCOCO project): the generator and critic tables of its write-up, as data.

Generator: the 64x64 image with its centre masked in, the 32x32 centre out. Every layer is a 4x4
convolution (Conv) or transposed convolution (TConv) of stride 2:

    layer   filters  in                   out
    Conv1   32       3 x 64 x 64          32 x 32 x 32
    Conv2   64       32 x 32 x 32         64 x 16 x 16
    Conv3   96       64 x 16 x 16         96 x 8 x 8
    Conv4   128      96 x 8 x 8           128 x 4 x 4
    TConv1  96       128 x 4 x 4          96 x 8 x 8
    TConv2  64       (96 + 96) x 8 x 8    64 x 16 x 16
    TConv3  3        (64 + 64) x 16 x 16  3 x 32 x 32

Skips concatenate feature maps along channels (pix2pix): Conv3's map joins TConv1's before TConv2,
Conv2's joins TConv2's before TConv3, as the in-shapes say. BN + ReLU after every hidden layer, no
linear layer. At width 64 these tables build 729,539 parameters (counted by `ganpaint models`; the
write-up gives no count).

Critic on the 32x32 centre patch: Conv1..Conv4 (32, 64, 96, 128 filters, 4x4 stride 2) take it to
128 x 2 x 2, Conv5 (256 filters, 2x2) to 256 x 1 x 1; BN + ReLU after each. Its score is not
squashed (WGAN); the training loop clamps its weights.

Departures from the write-up, and why:
- TConv3 has 3 filters where the table says 1: the output is the RGB centre (the project's code
  builds 3). It has no BN or ReLU and a bias; a sigmoid maps it to ganpaint's [0, 1].
- The critic's table ends at a 256 x 1 x 1 map, not at a score: a linear layer 256 -> 1 follows
  Conv5 (257 parameters; 461,697 in all).
- Inputs are mapped from [0, 1] to [-1, 1] inside forward (the DCGAN range both nets descend from).
- `width` scales every row (64 builds the tables exactly; tests build width 8), and other image
  sizes keep the first encoder rows and the last decoder rows (`layers.halvings`): 32 px builds
  Conv1-3 and TConv2-3.
- Optional conditioning (`condition_features` > 0, the caption variant): a vector per image is
  broadcast over the 4x4 bottleneck and concatenated to Conv4's map before TConv1; the critic adds
  a projection term <V condition, features> to its score (Miyato and Koyama 2018).
hole_mask is not an input: the hole is always the centre square the net predicts.

The family (`FAMILY`, at the end) adds schedule.critic_steps (`CriticSettings`, which the caption
variant shares) to the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ganpaint.models.family import Family, Nets, PhasePlan, StepKind, require_positive
from ganpaint.models.layers import (
    Row,
    conv_block,
    halvings,
    init_weights,
    make_layers,
    out_channels,
    scaled,
    take_rows,
)

if TYPE_CHECKING:
    from ganpaint.config import TrainConfig

# Channels are written at width 64, ganpaint's base width, so width 64 builds the tables as printed.
ENCODER = [
    Row("conv", 32, 4, stride=2),  # Conv1
    Row("conv", 64, 4, stride=2),  # Conv2
    Row("conv", 96, 4, stride=2),  # Conv3
    Row("conv", 128, 4, stride=2),  # Conv4
]
DECODER = [
    Row("deconv", 96, 4, stride=2),  # TConv1
    Row("deconv", 64, 4, stride=2),  # TConv2
]
TO_RGB = Row("deconv", 3, 4, stride=2, norm=False, activation=None, scale=False)  # TConv3
CRITIC = [
    Row("conv", 32, 4, stride=2),  # Conv1
    Row("conv", 64, 4, stride=2),  # Conv2
    Row("conv", 96, 4, stride=2),  # Conv3
    Row("conv", 128, 4, stride=2),  # Conv4
]
CRITIC_CONV5 = Row("conv", 256, 2, padding=0)  # kernel = the side left after the stride-2 rows


class WGANUNet(nn.Module):
    """forward(image_filled [N, 3, S, S] in [0, 1], hole_mask (ignored), condition [N, C] or None)
    -> centre [N, 3, S/2, S/2] in [0, 1].

    The encoder halves S down to a 4x4 map (`halvings`: 4 rows at 64 px); the decoder has one row
    fewer, each after the first reading its predecessor's map concatenated with the encoder map of
    the same side; the last decoder row is TO_RGB.
    """

    def __init__(self, image_px: int = 64, width: int = 64, condition_features: int = 0) -> None:
        super().__init__()
        encoder_rows = take_rows(ENCODER, halvings(image_px))
        self.encoder = _named("conv", make_layers(encoder_rows, 3, width))
        skip_channels = [out_channels(block) for block in self.encoder.values()]
        decoder_rows = take_rows(DECODER, len(encoder_rows) - 2, from_end=True) + [TO_RGB]
        self.condition_features = condition_features
        blocks, in_channels = [], skip_channels[-1] + condition_features
        for index, row in enumerate(decoder_rows):
            # row 0 reads the bottleneck; row k the previous row's map + encoder map -1-k (same side)
            skip = skip_channels[-1 - index] if index else 0
            blocks.append(conv_block(in_channels + skip, row, width))
            in_channels = out_channels(blocks[-1])
        self.decoder = _named("tconv", blocks)
        self.apply(init_weights)

    def forward(
        self,
        image_filled: torch.Tensor,
        hole_mask: torch.Tensor,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        skips, features = [], image_filled * 2 - 1
        for block in self.encoder.values():
            features = block(features)
            skips.append(features)
        if self.condition_features:
            side = features.shape[-1]
            broadcast = condition[:, :, None, None].expand(-1, -1, side, side).to(features.dtype)
            features = torch.cat([features, broadcast], dim=1)
        for index, block in enumerate(self.decoder.values()):
            if index:
                features = torch.cat([features, skips[-1 - index]], dim=1)
            features = block(features)
        return torch.sigmoid(features)


def _named(prefix: str, blocks) -> nn.ModuleDict:
    """Blocks keyed conv1, conv2, ... (the write-up's layer names, as `ganpaint models` prints)."""
    return nn.ModuleDict({f"{prefix}{number}": block for number, block in enumerate(blocks, 1)})


class WGANCritic(nn.Module):
    """forward(patch [N, 3, P, P] in [0, 1], condition [N, C] or None) -> scores [N].

    Paper size P = 32: stride-2 rows down to 2x2 (`halvings(P, 2)`), Conv5 over what is left, a
    linear score; with a condition, plus the projection <V condition, features>.
    """

    def __init__(self, patch_px: int = 32, width: int = 64, condition_features: int = 0) -> None:
        super().__init__()
        rows = take_rows(CRITIC, halvings(patch_px, smallest_px=2))
        final_side = patch_px >> len(rows)
        blocks = list(make_layers(rows, 3, width))
        conv5 = CRITIC_CONV5._replace(kernel=final_side)
        blocks.append(conv_block(out_channels(blocks[-1]), conv5, width))
        self.features = _named("conv", blocks)
        hidden = scaled(CRITIC_CONV5.channels, width)
        self.score = nn.Linear(hidden, 1)
        self.projection = (
            nn.Linear(condition_features, hidden, bias=False) if condition_features else None
        )
        self.apply(init_weights)

    def forward(self, patch: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        features = patch * 2 - 1
        for block in self.features.values():
            features = block(features)
        features = features.flatten(1)  # [N, 256] at width 64
        score = self.score(features).reshape(-1)
        if self.projection is not None:
            projected = self.projection(condition.to(features.dtype))
            score = score + (projected * features).sum(dim=1)
        return score


@dataclass(frozen=True)
class CriticSettings:
    """The schedule key of a family trained with a critic (StepKind.CRITIC phases)."""

    critic_steps: int = 1  # critic updates per generator update (configs/wgan_unet_coco.yaml: 5)


def check_critic(config: TrainConfig) -> None:
    """The rule of a family with CriticSettings: at least one critic update per generator one."""
    require_positive("schedule.critic_steps", config.schedule.critic_steps)


FAMILY = Family(
    name="wgan_unet",
    summary="64 px COCO centre-hole U-Net with a weight-clipped WGAN critic",
    build=lambda model, image_px, local_px: Nets(
        WGANUNet(image_px, model.width), WGANCritic(local_px, model.disc_width)
    ),
    phases=(PhasePlan("joint", StepKind.CRITIC),),
    schedule_settings=CriticSettings,
    predicts_center=True,
    check=check_critic,
)
