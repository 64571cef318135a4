"""Autocast-safe losses: logits or images in (any float dtype), computed in fp32, scalar tensors out.

Discriminators return logits and every adversarial loss goes through
`binary_cross_entropy_with_logits`: the seeds' sigmoid + BCELoss loses precision in bf16/fp16 and is
refused by autocast. Equations cite Iizuka et al. 2017 (GLCIC), Pathak et al. 2016 (Context
Encoders), Arjovsky et al. 2017 (WGAN) and Goodfellow et al. 2014.

ganpaint uses the papers' objectives in their plain form. One public GLCIC port halves its generator
loss ((mse + alpha * adv) / 2) and multiplies its discriminator loss by alpha; ganpaint does neither.
The halving only rescales the generator's step size. Multiplying D's loss by alpha = 4e-4 shrinks
D's gradients 2500-fold, which slows D directly under SGD-like updates and, under Adadelta, puts
them near its epsilon (1e-6), so D would barely learn in phases 2 and 3. In the paper alpha weighs
the adversarial term of the completion net's objective only (Eq. 3); D's own objective has none.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def masked_mse(
    prediction: torch.Tensor, target: torch.Tensor, hole_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over the hole pixels: GLCIC Eq. 1 / Context Encoders Eq. 1, normalised.

    prediction, target [N, C, H, W]; hole_mask [N, 1, H, W] (1 = hole) or None for a plain MSE.
    Returns sum over the hole of (prediction - target)^2 / (hole pixels * C); 0 for an empty mask.
    The papers write the squared L2 norm ||M * (C(x, M) - x)||^2 (a sum); ganpaint divides by the
    hole size so the loss, and the weight alpha that balances it, do not depend on the hole or image
    size. Pixels outside the hole get exactly zero gradient.
    """
    error = (prediction.float() - target.float()).pow(2)
    if hole_mask is None:
        return error.mean()
    hole_mask = hole_mask.float()
    hole_values = hole_mask.sum() * prediction.shape[1]
    return (error * hole_mask).sum() / hole_values.clamp_min(1.0)


def overlap_mse(
    prediction: torch.Tensor,
    target: torch.Tensor,
    hole_mask: torch.Tensor,
    overlap_px: int,
    overlap_weight: float,
) -> torch.Tensor:
    """Context Encoders' reconstruction loss with overlap (Pathak et al. 2016, Sec. 4.1 and their
    released code): the region predicted is the hole grown by overlap_px, the band of known context
    it overlaps weighted overlap_weight times (10 in the paper) over the hole's 1.

    Returns sum over the region of weight * (prediction - target)^2 / (region pixels * C), the
    paper's weighted mean over the predicted patch; overlap_px = 0 is `masked_mse`.
    """
    if overlap_px == 0:
        return masked_mse(prediction, target, hole_mask)
    hole = hole_mask.float()
    region = F.max_pool2d(hole, 2 * overlap_px + 1, stride=1, padding=overlap_px)  # grown hole
    weight = hole + overlap_weight * (region - hole)
    error = (prediction.float() - target.float()).pow(2)
    return (error * weight).sum() / (region.sum() * prediction.shape[1]).clamp_min(1.0)


def discriminator_bce(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """-[log D(real) + log(1 - D(fake))], averaged over the batch (GLCIC Eq. 2; DCGAN).

    One-sided label smoothing (Salimans et al. 2016): real targets become 1 - label_smoothing,
    fake targets stay 0. The two terms are summed, as in the paper and the DCGAN reference.
    """
    real_logits, fake_logits = real_logits.float(), fake_logits.float()
    real_targets = torch.full_like(real_logits, 1.0 - label_smoothing)
    real = F.binary_cross_entropy_with_logits(real_logits, real_targets)
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real + fake


def generator_bce(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -log D(G(x)), averaged over the batch.

    The papers write the minimax term log(1 - D(G(x))); like their released code (and Goodfellow et
    al.'s recommendation) ganpaint minimises -log D(G(x)), whose gradient does not vanish while D
    wins. Same fixed point, stronger early gradients.
    """
    fake_logits = fake_logits.float()
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def wgan_critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """E[f(fake)] - E[f(real)]: the critic minimises it, i.e. maximises WGAN Eq. 3's estimate."""
    return fake_scores.float().mean() - real_scores.float().mean()


def wgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """-E[f(G(x))]: the generator raises the critic's score of its samples."""
    return -fake_scores.float().mean()


@torch.no_grad()
def clamp_weights_(module: nn.Module, limit: float) -> None:
    """Clip every parameter of the critic to [-limit, limit] in place (WGAN Algorithm 1, line 7)."""
    for parameter in module.parameters():
        parameter.clamp_(-limit, limit)


def inpainting_generator_loss(
    reconstruction: torch.Tensor,
    adversarial: torch.Tensor,
    alpha: float,
    reconstruction_weight: float = 1.0,
) -> torch.Tensor:
    """The generator's side of every joint inpainting step: lambda_rec * L(x, M) + alpha * adv.

    GLCIC Eq. 3 with lambda_rec = 1, alpha = 4e-4; Context Encoders' lambda_rec * L2 +
    lambda_adv * BCE; the WGAN U-Net's L2 + critic score "simply added" (alpha = 1).
    reconstruction: `masked_mse`; adversarial: `generator_bce` of D's logits, or
    `wgan_generator_loss`. Not halved and not otherwise rescaled (see the module docstring).
    """
    return reconstruction_weight * reconstruction.float() + alpha * adversarial.float()
