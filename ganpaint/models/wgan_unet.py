"""WGAN U-Net (IFT-6266 MSCOCO project): a U-Net that paints the 32x32 centre of a 64x64 image.

The encoder halves the whole 64 px image down to 4x4. The decoder paints only the centre: its stage
of side r is the centre at stride 32/r, the same stride as the encoder stage of side 2r, whose centre
r x r crop is concatenated to it (the skip connection of a U-Net, cropped to the region painted).
The decoder starts from the bottleneck (4x4, whole image) read as the centre at stride 8, so every
centre pixel sees the whole image. The critic is `layers.StridedDiscriminator` on the 32 px patch;
its output is a WGAN score (no sigmoid, weights clamped by the training loop).

The seed project's exact widths are not published with it; ganpaint uses DCGAN-style widths
(w, 2w, 4w, 8w), 4x4 stride-2 convs with LeakyReLU 0.2 in the encoder and BN + ReLU transposed convs
in the decoder, a sigmoid output, and the input mapped to [-1, 1]. hole_mask is not an input: the
hole is always the centre square the net predicts. Option, off in the preset: `residual` returns
the filled input's centre plus the last layer's output (zero-initialised, clamped to [0, 1]).
"""

from __future__ import annotations

import torch
from torch import nn

from ganpaint.models.layers import (
    Row,
    center_crop,
    conv_block,
    halvings,
    init_weights,
    make_layers,
    out_channels,
    take_rows,
    zero_last_layer,
)

# Encoder at 64 px: 64 -> 32 -> 16 -> 8 -> 4. Smaller images keep the first rows.
ENCODER = [
    Row("conv", 64, 4, stride=2, norm=False, activation="leaky"),
    Row("conv", 128, 4, stride=2, activation="leaky"),
    Row("conv", 256, 4, stride=2, activation="leaky"),
    Row("conv", 512, 4, stride=2, activation="leaky"),
]
BOTTLENECK = Row("conv", 512, 3, activation="leaky")  # at 4x4; channels follow the last encoder row
# Decoder for the 32 px centre: 4 -> 8 -> 16 -> 32; each input has the matching skip concatenated.
DECODER = [
    Row("deconv", 256, 4, stride=2),
    Row("deconv", 128, 4, stride=2),
    Row("deconv", 64, 4, stride=2),
]
TO_RGB = Row("conv", 3, 3, norm=False, activation=None, scale=False)


class WGANUNet(nn.Module):
    """forward(image_filled [N, 3, S, S] in [0, 1], hole_mask (ignored)) -> centre [N, 3, S/2, S/2].

    Paper size S = 64 (centre 32). Encoder stages: halvings(S) (4 at 64 px); decoder stages: one
    fewer, each fed the previous stage concatenated with the encoder stage of twice its side.
    """

    predicts_center = True

    def __init__(self, image_px: int = 64, width: int = 64, residual: bool = False) -> None:
        super().__init__()
        encoder_rows = take_rows(ENCODER, halvings(image_px))
        self.encoder = nn.ModuleList(make_layers(encoder_rows, 3, width))
        skip_channels = [out_channels(block) for block in self.encoder]
        bottleneck = BOTTLENECK._replace(channels=encoder_rows[-1].channels)
        self.bottleneck = conv_block(skip_channels[-1], bottleneck, width)
        decoder_rows = take_rows(DECODER, len(encoder_rows) - 1, from_end=True)
        self.decoder = nn.ModuleList()
        in_channels = out_channels(self.bottleneck)
        # stage k reads the encoder stage two below the bottleneck first, then one shallower each time
        for row, skip in zip(decoder_rows, reversed(skip_channels[:-1]), strict=True):
            self.decoder.append(conv_block(in_channels + skip, row, width))
            in_channels = out_channels(self.decoder[-1])
        self.to_rgb = conv_block(in_channels, TO_RGB, width)
        self.residual = residual
        self.apply(init_weights)
        if residual:
            zero_last_layer(self.to_rgb)

    def forward(self, image_filled: torch.Tensor, hole_mask: torch.Tensor) -> torch.Tensor:
        skips, features = [], image_filled * 2 - 1
        for block in self.encoder:
            features = block(features)
            skips.append(features)
        features = self.bottleneck(features)
        for block, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            features = block(torch.cat([features, center_crop(skip, features.shape[-1])], dim=1))
        output = self.to_rgb(features)
        if self.residual:
            return (center_crop(image_filled, output.shape[-1]) + output).clamp(0, 1)
        return torch.sigmoid(output)
