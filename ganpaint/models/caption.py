"""L2 + GAN + Caption (the WGAN U-Net write-up's third variant): a text encoder trained from scratch
and the caption-conditioned U-Net generator and critic built on `wgan_unet`'s tables.

The write-up announces the variant without publishing it; ganpaint's choices:
- Text encoder: word embedding (128) + one-layer GRU (128) at width 64 (both scale with the net's
  width, as the conv rows do); the caption's vector is the GRU state after its last word
  (trailing [PAD] ids, 0, are not read). Nothing is pretrained or downloaded:
  the vocabulary is the pack-time tokenizer's (ganpaint/data/captions.py).
- Generator: the U-Net of wgan_unet with the caption vector broadcast over its 4x4 bottleneck and
  concatenated to Conv4's map before TConv1 (TConv1 reads 128 + 128 channels at width 64).
- Critic: the wgan_unet critic with a projection term (Miyato and Koyama 2018): score(patch,
  caption) = w . h + (V e) . h, h the 256 Conv5 features, e the caption vector. It has its own
  text encoder, so each net is trained by its own optimiser (and clamped with the critic's weights).

The family (`FAMILY`, at the end) adds model.vocabulary_size and wgan_unet's schedule.critic_steps
to the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ganpaint.models.family import Family, Nets, PhasePlan, StepKind, require_positive
from ganpaint.models.layers import scaled
from ganpaint.models.wgan_unet import CriticSettings, WGANCritic, WGANUNet, check_critic

if TYPE_CHECKING:
    from ganpaint.config import TrainConfig

TEXT_FEATURES = 128  # embedding and GRU features at width 64


class TextEncoder(nn.Module):
    """forward(tokens [N, T] int64, 0 = [PAD] after the words) -> caption vectors [N, features].

    An all-[PAD] caption (an image without one) reads as one [PAD] token: a learnt "no caption".
    """

    def __init__(self, vocabulary_size: int, features: int = TEXT_FEATURES) -> None:
        super().__init__()
        self.features = features
        self.embedding = nn.Embedding(vocabulary_size, features, padding_idx=0)
        self.recurrent = nn.GRU(features, features, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.recurrent(self.embedding(tokens))  # [N, T, features]
        # The state after the last word; counting words on the device keeps the step sync-free.
        last = (tokens != 0).sum(dim=1).clamp_min(1) - 1
        return states[torch.arange(tokens.shape[0], device=tokens.device), last]


class CaptionUNet(nn.Module):
    """forward(image_filled [N, 3, S, S] in [0, 1], hole_mask (ignored), tokens [N, T])
    -> centre [N, 3, S/2, S/2] in [0, 1]."""

    def __init__(self, image_px: int, width: int, vocabulary_size: int) -> None:
        super().__init__()
        self.text = TextEncoder(vocabulary_size, scaled(TEXT_FEATURES, width))
        self.unet = WGANUNet(image_px, width, condition_features=self.text.features)

    def forward(
        self, image_filled: torch.Tensor, hole_mask: torch.Tensor, tokens: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(image_filled, hole_mask, self.text(tokens))


class CaptionCritic(nn.Module):
    """forward(patch [N, 3, P, P] in [0, 1], tokens [N, T]) -> scores [N] (WGAN, not squashed)."""

    def __init__(self, patch_px: int, width: int, vocabulary_size: int) -> None:
        super().__init__()
        self.text = TextEncoder(vocabulary_size, scaled(TEXT_FEATURES, width))
        self.critic = WGANCritic(patch_px, width, condition_features=self.text.features)

    def forward(self, patch: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.critic(patch, self.text(tokens))


@dataclass(frozen=True)
class CaptionSettings:
    """The caption family's own model key."""

    # rows of the word embedding; at least the shards' tokenizer vocabulary (ganpaint's
    # tokenizers hold at most 10,000 words)
    vocabulary_size: int = 10_000


def check(config: TrainConfig) -> None:
    """The critic's rule (`check_critic`), and an embedding of at least one row."""
    check_critic(config)
    require_positive("model.vocabulary_size", config.model.vocabulary_size)


FAMILY = Family(
    name="wgan_unet_caption",
    summary="wgan_unet conditioned on COCO captions (text encoder trained from scratch)",
    build=lambda model, image_px, local_px: Nets(
        CaptionUNet(image_px, model.width, model.vocabulary_size),
        CaptionCritic(local_px, model.disc_width, model.vocabulary_size),
    ),
    phases=(PhasePlan("joint", StepKind.CRITIC),),
    model_settings=CaptionSettings,
    schedule_settings=CriticSettings,
    predicts_center=True,
    captions=True,
    check=check,
)
