"""Context Encoders (Pathak et al. 2016): the encoder-decoder that paints the centre square.

Departures from the paper, all deliberate:
- Bottleneck: the paper's 227 px AlexNet version joins encoder and decoder by a channel-wise FC;
  the 128 px CelebA/ImageNet version released by the authors, which ganpaint follows, uses a 4x4
  valid convolution to a 4000-channel 1x1 bottleneck (a full FC over the 4x4x512 map), BN,
  LeakyReLU, then a 4x4 transposed conv back to 4x4. The bottleneck scales with width (500 at 8).
- Overlap: the paper's hole is 4 px smaller than the 64x64 region the net predicts, and the
  reconstruction loss weights that band of context 10x (`loss.overlap_px`, `loss.overlap_weight`,
  `losses.overlap_mse`; the CelebA preset's default). With overlap_px 0 the hole is the whole
  predicted square and the loss covers the hole only.
- Output: (tanh + 1) / 2, the paper's tanh mapped to ganpaint's [0, 1]; the input is likewise mapped
  to the paper's [-1, 1] inside forward.
- hole_mask is ignored, as in the paper: the encoder sees only the image with the centre filled.

The family (`FAMILY`, at the end) has no settings of its own; its adversary is layers'
DCGAN-style `StridedDiscriminator` on the predicted centre.
"""

from __future__ import annotations

import torch
from torch import nn

from ganpaint.models.family import Family, Nets, PhasePlan, StepKind
from ganpaint.models.layers import (
    Row,
    StridedDiscriminator,
    conv_block,
    halvings,
    init_weights,
    make_layers,
    out_channels,
    take_rows,
)

# Encoder at 128 px: 4x4 stride-2 convs 128 -> 64 -> 32 -> 16 -> 8 -> 4, LeakyReLU 0.2, BN from the
# second on. Smaller images drop rows from the shallow end (the deep widths are kept).
ENCODER = [
    Row("conv", 64, 4, stride=2, norm=False, activation="leaky"),
    Row("conv", 64, 4, stride=2, activation="leaky"),
    Row("conv", 128, 4, stride=2, activation="leaky"),
    Row("conv", 256, 4, stride=2, activation="leaky"),
    Row("conv", 512, 4, stride=2, activation="leaky"),
]
BOTTLENECK = Row("conv", 4000, 4, padding=0, activation="leaky")  # 4x4 -> 1x1
# Decoder to the 64 px centre: 1 -> 4 -> 8 -> 16 -> 32, BN + ReLU, then 32 -> 64 to RGB. Smaller
# centres drop hidden rows from the shallow (high-resolution) end.
DECODER = [
    Row("deconv", 512, 4, padding=0),
    Row("deconv", 256, 4, stride=2),
    Row("deconv", 128, 4, stride=2),
    Row("deconv", 64, 4, stride=2),
]
TO_RGB = Row("deconv", 3, 4, stride=2, norm=False, activation=None, scale=False)


class ContextEncoder(nn.Module):
    """forward(image_filled [N, 3, S, S] in [0, 1], hole_mask (ignored)) -> centre [N, 3, S/2, S/2].

    Paper size S = 128 (centre 64). The encoder halves S down to 4x4 (`halvings`), the bottleneck
    reduces 4x4 to 1x1, and the decoder doubles from 4x4 up to `center_px`, all of it convolutional.
    """

    def __init__(self, image_px: int = 128, center_px: int = 64, width: int = 64) -> None:
        super().__init__()
        encoder_rows = take_rows(ENCODER, halvings(image_px), from_end=True)
        self.encoder = make_layers(encoder_rows, 3, width)
        final_side = image_px >> len(encoder_rows)
        bottleneck = BOTTLENECK._replace(kernel=final_side)
        self.bottleneck = conv_block(out_channels(self.encoder[-1]), bottleneck, width)
        # the first decoder row takes 1x1 to 4x4; each later one doubles, TO_RGB doubles once more
        decoder_rows = take_rows(DECODER, halvings(center_px))
        self.decoder = make_layers(decoder_rows + [TO_RGB], out_channels(self.bottleneck), width)
        self.apply(init_weights)

    def forward(self, image_filled: torch.Tensor, hole_mask: torch.Tensor) -> torch.Tensor:
        code = self.bottleneck(self.encoder(image_filled * 2 - 1))
        return (torch.tanh(self.decoder(code)) + 1) / 2


FAMILY = Family(
    name="context_encoder",
    summary="Pathak et al. 2016: encoder-decoder predicting the centre, DCGAN-style D",
    build=lambda model, image_px, local_px: Nets(
        ContextEncoder(image_px, local_px, model.width),
        StridedDiscriminator(local_px, model.disc_width),
    ),
    phases=(PhasePlan("joint", StepKind.ADVERSARIAL),),
    predicts_center=True,
)
