"""GLCIC (Iizuka et al. 2017): the 17-layer completion net and the global + local discriminators.

Departures from the paper, all deliberate:
- Convolutions followed by BN have no bias (BN's shift makes it redundant); the order is always
  conv -> BN -> ReLU (one public port applies BN after ReLU).
- The discriminators return a logit; the sigmoid lives in the loss (`binary_cross_entropy_with_logits`),
  which is safe under autocast where sigmoid + BCE is not.
- `dilations` (model.dilations) may replace the rates of the four dilated rows: the paper's 2, 4,
  8, 16 suit 256 px images (a 64 px map); at 64 px the map is 16 px and rates 8 and 16 read
  mostly padding. The paper presets keep the paper's rates.
- Image sizes other than the paper's adapt the discriminators by one rule, `layers.halvings`: stride-2
  convs are stacked while the map stays >= 4 px (256 px: 6 convs, 128 px: 5, the paper's two
  cases; 160 px: 5 with a 5x5 final map; 96 px: 4 with 6x6).

The family (`FAMILY`, at the end) adds model.fc_features and model.dilations to the config, and
trains in the paper's three phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from ganpaint.errors import ConfigError
from ganpaint.models.family import Family, Nets, PhasePlan, StepKind, require_positive
from ganpaint.models.layers import (
    Row,
    halvings,
    init_weights,
    make_layers,
    out_channels,
    take_rows,
)

if TYPE_CHECKING:
    from ganpaint.config import ModelConfig, TrainConfig

# Completion network, the paper's Table 1, row for row (channels at width 64).
COMPLETION_NET = [
    Row("conv", 64, 5),
    Row("conv", 128, 3, stride=2),
    Row("conv", 128, 3),
    Row("conv", 256, 3, stride=2),
    Row("conv", 256, 3),
    Row("conv", 256, 3),
    Row("conv", 256, 3, dilation=2),
    Row("conv", 256, 3, dilation=4),
    Row("conv", 256, 3, dilation=8),
    Row("conv", 256, 3, dilation=16),
    Row("conv", 256, 3),
    Row("conv", 256, 3),
    Row("deconv", 128, 4, stride=2),
    Row("conv", 128, 3),
    Row("deconv", 64, 4, stride=2),
    Row("conv", 32, 3),
    Row("conv", 3, 3, norm=False, activation=None, scale=False),  # sigmoid applied in forward
]

PAPER_DILATIONS = (2, 4, 8, 16)  # the dilated rows above, in order


def with_dilations(rows: list[Row], dilations: Sequence[int]) -> list[Row]:
    """The table with its dilated rows' rates replaced, in order (`model.dilations`)."""
    if len(dilations) != len(PAPER_DILATIONS):
        raise ValueError(f"need {len(PAPER_DILATIONS)} dilation rates, got {list(dilations)}")
    rates = iter(dilations)
    return [row._replace(dilation=next(rates)) if row.dilation > 1 else row for row in rows]


# Discriminators, the paper's Table 2: 5x5 stride-2 convs, then FC -> fc_features. The global D
# has all six convs at 256 px; the local D (128 px) the first five. Other sizes: `halvings`.
DISCRIMINATOR_CONVS = [
    Row("conv", 64, 5, stride=2),
    Row("conv", 128, 5, stride=2),
    Row("conv", 256, 5, stride=2),
    Row("conv", 512, 5, stride=2),
    Row("conv", 512, 5, stride=2),
    Row("conv", 512, 5, stride=2),
]


class CompletionNet(nn.Module):
    """GLCIC completion network: fully convolutional, H and W any multiple of 4.

    forward(image_filled [N, 3, H, W] in [0, 1] with the hole already set to the fill colour,
    hole_mask [N, 1, H, W], 1 = hole) -> completion [N, 3, H, W] in [0, 1] (sigmoid). The mask is
    the fourth input channel, as in the paper. 6.07 M parameters at width 64.
    """

    def __init__(self, width: int = 64, dilations: Sequence[int] = PAPER_DILATIONS) -> None:
        super().__init__()
        self.layers = make_layers(with_dilations(COMPLETION_NET, dilations), 4, width)
        self.apply(init_weights)

    def forward(self, image_filled: torch.Tensor, hole_mask: torch.Tensor) -> torch.Tensor:
        net_input = torch.cat([image_filled, hole_mask.to(image_filled.dtype)], dim=1)
        return torch.sigmoid(self.layers(net_input))


class DiscriminatorBranch(nn.Module):
    """One GLCIC discriminator: image [N, 3, P, P] -> features [N, fc_features] (after ReLU)."""

    def __init__(self, image_px: int, disc_width: int, fc_features: int) -> None:
        super().__init__()
        rows = take_rows(DISCRIMINATOR_CONVS, halvings(image_px))
        self.convs = make_layers(rows, 3, disc_width)
        side = image_px
        for _ in rows:  # 5x5 kernels with padding 2 and stride 2: ceil(side / 2)
            side = (side + 1) // 2
        self.fc = nn.Sequential(
            nn.Linear(out_channels(self.convs[-1]) * side * side, fc_features),
            nn.ReLU(inplace=True),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.convs(image).flatten(1))


class GLCICDiscriminator(nn.Module):
    """Global + local context discriminators joined by one FC layer.

    forward(image [N, 3, H, W] in [0, 1] (the whole completed or real image),
    local_patch [N, 3, L, L] in [0, 1] (the local area around the hole)) -> logits [N].
    The two fc_features vectors are concatenated and mapped to one logit (no sigmoid here).
    """

    def __init__(
        self, image_px: int, local_px: int, disc_width: int = 64, fc_features: int = 1024
    ) -> None:
        super().__init__()
        self.global_net = DiscriminatorBranch(image_px, disc_width, fc_features)
        self.local_net = DiscriminatorBranch(local_px, disc_width, fc_features)
        self.joint = nn.Linear(2 * fc_features, 1)
        self.apply(init_weights)

    def forward(self, image: torch.Tensor, local_patch: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([self.global_net(image), self.local_net(local_patch)], dim=1)
        return self.joint(joined).squeeze(1)


@dataclass(frozen=True)
class GLCICSettings:
    """GLCIC's own model keys (model.fc_features, model.dilations)."""

    fc_features: int = 1024  # the discriminators' fully connected width (paper: 1024)
    # rates of the completion net's four dilated rows (paper: 2, 4, 8, 16 at 256 px)
    dilations: list[int] = field(default_factory=lambda: list(PAPER_DILATIONS))


def build(model: ModelConfig, image_px: int, local_px: int) -> Nets:
    """The completion net and the global + local discriminators (`model` holds GLCICSettings)."""
    return Nets(
        CompletionNet(model.width, model.dilations),
        GLCICDiscriminator(image_px, local_px, model.disc_width, model.fc_features),
    )


def check(config: TrainConfig) -> None:
    """GLCIC's own rules: a local area of whole 16 px steps (the local discriminator's stride-2
    rows), a positive fc_features, four dilation rates >= 1."""
    if config.masks.local_px % 16:
        raise ConfigError(
            f"config key 'masks.local_px': must be a multiple of 16, got {config.masks.local_px}"
        )
    require_positive("model.fc_features", config.model.fc_features)
    dilations = list(config.model.dilations)
    if len(dilations) != len(PAPER_DILATIONS) or min(dilations) < 1:
        raise ConfigError(
            f"config key 'model.dilations': need {len(PAPER_DILATIONS)} rates >= 1 (the completion "
            f"net's dilated rows), got {dilations}"
        )


FAMILY = Family(
    name="glcic",
    summary="Iizuka et al. 2017: dilated completion net, global + local discriminators",
    build=build,
    # Paper Sec. 3.3: C alone for Tc, D alone for Td, then jointly until T.
    phases=(
        PhasePlan("completion", StepKind.COMPLETION, lambda schedule: schedule.completion_steps),
        PhasePlan(
            "discriminator", StepKind.DISCRIMINATOR, lambda schedule: schedule.discriminator_steps
        ),
        PhasePlan("joint", StepKind.ADVERSARIAL),
    ),
    model_settings=GLCICSettings,
    judges_whole_image=True,
    size_multiple=4,  # the completion net halves the resolution twice
    check=check,
)
