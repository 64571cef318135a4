"""Shared building blocks: layer-table rows, the loop that builds them, weight init, a DCGAN-style D.

Every network in ganpaint is written as a paper table: a list of `Row`s, one per convolution, built
in a loop by `make_layers` (the idea of torchvision's vgg `cfgs`). A row carries the channel count at
the paper's width (64); `make_layers` scales it by `width / 64`, so width 8 builds a test-sized net
with the same depth, kernels, strides and dilations.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

PAPER_WIDTH = 64  # every table below is written at the papers' base width


class Row(NamedTuple):
    """One convolution of a paper table, followed by its normalisation and activation."""

    kind: str  # "conv" | "deconv" (transposed convolution)
    channels: int  # output channels at the paper width (scaled unless `scale` is False)
    kernel: int
    stride: int = 1
    dilation: int = 1
    padding: int | None = None  # None: keep the size (stride 1) or scale it exactly by the stride
    norm: bool = True  # BatchNorm after the convolution (conv -> BN -> activation)
    activation: str | None = "relu"  # "relu" | "leaky" (slope 0.2) | None
    scale: bool = True  # False for fixed widths: RGB outputs, single logits


def scaled(channels: int, width: int) -> int:
    """Channels of a paper row at base width `width` (never below 1)."""
    return max(1, channels * width // PAPER_WIDTH)


def _padding(row: Row) -> int:
    if row.padding is not None:
        return row.padding
    if row.kind == "deconv":
        # kernel 4, stride 2, padding 1 doubles the side exactly: (n - 1) * 2 - 2 + 4 = 2n
        return (row.kernel - row.stride) // 2
    return row.dilation * (row.kernel - 1) // 2


def conv_block(in_channels: int, row: Row, width: int) -> nn.Sequential:
    """conv -> [BN] -> [activation] for one row (never BN after the activation).

    The convolution has no bias when BN follows: BN's shift makes it redundant.
    """
    out_channels = scaled(row.channels, width) if row.scale else row.channels
    conv_type = nn.ConvTranspose2d if row.kind == "deconv" else nn.Conv2d
    layers: list[nn.Module] = [
        conv_type(
            in_channels,
            out_channels,
            row.kernel,
            stride=row.stride,
            padding=_padding(row),
            dilation=row.dilation,
            bias=not row.norm,
        )
    ]
    if row.norm:
        layers.append(nn.BatchNorm2d(out_channels))
    if row.activation == "relu":
        layers.append(nn.ReLU(inplace=True))
    elif row.activation == "leaky":
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    elif row.activation is not None:
        raise ValueError(f"unknown activation {row.activation!r}")
    return nn.Sequential(*layers)


def out_channels(block: nn.Sequential) -> int:
    """Output channels of a `conv_block` (its first module is the convolution)."""
    return block[0].out_channels


def make_layers(rows: list[Row], in_channels: int, width: int) -> nn.Sequential:
    """Build a table row by row; each row's input width is the previous row's output."""
    blocks = []
    for row in rows:
        blocks.append(conv_block(in_channels, row, width))
        in_channels = out_channels(blocks[-1])
    return nn.Sequential(*blocks)


def halvings(image_px: int, smallest_px: int = 4) -> int:
    """How many stride-2 layers take `image_px` down to a map of side in [smallest_px, 2*smallest_px).

    The rule every discriminator and encoder uses to adapt a paper table to another image size:
    256 -> 6 (final 4x4), 128 -> 5, 160 -> 5 (final 5x5), 96 -> 4 (final 6x6), 32 -> 3.
    """
    if image_px < smallest_px:
        raise ValueError(f"image side {image_px} px is below {smallest_px} px")
    return int(math.floor(math.log2(image_px / smallest_px)))


def take_rows(rows: list[Row], count: int, from_end: bool = False) -> list[Row]:
    """The first (or last) `count` rows of a table, repeating the edge row when it is too short."""
    if count <= len(rows):
        return rows[len(rows) - count :] if from_end else rows[:count]
    extra = [rows[0 if from_end else -1]] * (count - len(rows))
    return extra + rows if from_end else rows + extra


@torch.no_grad()
def init_weights(module: nn.Module) -> None:
    """DCGAN init (Radford et al.): conv / linear weights N(0, 0.02), BN weight N(1, 0.02), biases 0.

    Applied to every family: the Context Encoders code uses it too, and GLCIC states no init.
    Nets built on the meta device (shape and FLOP summaries) hold no values and are skipped.
    """
    if any(parameter.is_meta for parameter in module.parameters(recurse=False)):
        return
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def center_crop(features: torch.Tensor, side: int) -> torch.Tensor:
    """The centre side x side window of [N, C, H, W] features."""
    top, left = (features.shape[-2] - side) // 2, (features.shape[-1] - side) // 2
    return features[..., top : top + side, left : left + side]


@torch.no_grad()
def zero_last_layer(module: nn.Module) -> None:
    """Zero the weights and bias of the module's last convolution: a residual generator then
    starts as the identity on its filled input."""
    last = [
        layer for layer in module.modules() if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))
    ]
    nn.init.zeros_(last[-1].weight)
    if last[-1].bias is not None:
        nn.init.zeros_(last[-1].bias)


# DCGAN discriminator (Radford et al.): 4x4 stride-2 convs w, 2w, 4w, 8w, LeakyReLU 0.2, BN from the
# second conv on, then a 4x4 valid conv to one logit. Written for 64 px; other sides keep halving to 4x4.
STRIDED_DISCRIMINATOR = [
    Row("conv", 64, 4, 2, norm=False, activation="leaky"),
    Row("conv", 128, 4, 2, activation="leaky"),
    Row("conv", 256, 4, 2, activation="leaky"),
    Row("conv", 512, 4, 2, activation="leaky"),
]
LOGIT = Row("conv", 1, 4, 1, padding=0, norm=False, activation=None, scale=False)


class StridedDiscriminator(nn.Module):
    """DCGAN-style discriminator: image [N, 3, P, P] in [0, 1] -> logits [N] (no sigmoid).

    Serves the DCGAN D (64 px), the Context Encoder adversary (64 px centre patch) and the WGAN
    critic (32 px centre patch; its output is a score, same layers). Halvings follow `halvings(P)`:
    4 convs at 64 px, 3 at 32 px. The first conv sees the image rescaled to [-1, 1], the range the
    DCGAN papers trained on.
    """

    def __init__(self, image_px: int, width: int) -> None:
        super().__init__()
        rows = take_rows(STRIDED_DISCRIMINATOR, halvings(image_px))
        self.features = make_layers(rows, 3, width)
        final_side = image_px >> len(rows)
        self.logit = conv_block(
            out_channels(self.features[-1]), LOGIT._replace(kernel=final_side), width
        )
        self.apply(init_weights)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # the logit conv covers the whole final map: its output is [N, 1, 1, 1]
        return self.logit(self.features(image * 2 - 1)).reshape(-1)


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block (BN on running stats: batch 1 works), then the previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
