"""Losses: hand-computed values, hole-only gradients, fp32 results from bf16 inputs, clamping."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ganpaint.losses import (
    clamp_weights_,
    discriminator_bce,
    generator_bce,
    inpainting_generator_loss,
    masked_mse,
    wgan_critic_loss,
    wgan_generator_loss,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_masked_mse_hand_value():
    prediction = torch.tensor([[[[0.0, 1.0], [0.5, 0.25]], [[1.0, 1.0], [1.0, 1.0]]]])  # [1,2,2,2]
    target = torch.zeros(1, 2, 2, 2)
    hole_mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])  # left column
    # hole values: channel 0 -> 0.0, 0.5; channel 1 -> 1.0, 1.0; squares 0 + 0.25 + 1 + 1
    assert masked_mse(prediction, target, hole_mask).item() == pytest.approx(2.25 / 4)
    assert masked_mse(prediction, target).item() == pytest.approx((0 + 1 + 0.25 + 0.0625 + 4) / 8)


def test_masked_mse_gradient_only_in_hole():
    prediction = torch.rand(2, 3, 8, 8, requires_grad=True)
    hole_mask = torch.zeros(2, 1, 8, 8)
    hole_mask[0, :, 2:5, 3:6] = 1
    hole_mask[1, :, 0:2, :] = 1
    masked_mse(prediction, torch.rand(2, 3, 8, 8), hole_mask).backward()
    outside = (1 - hole_mask).expand_as(prediction).bool()
    assert torch.all(prediction.grad[outside] == 0)
    assert torch.all(prediction.grad[~outside] != 0)


def test_masked_mse_ignores_outside_values_and_empty_masks():
    target = torch.rand(1, 3, 4, 4)
    hole_mask = torch.zeros(1, 1, 4, 4)
    hole_mask[..., :2, :2] = 1
    changed = target.clone()
    changed[..., 3, 3] += 5  # outside the hole
    assert masked_mse(changed, target, hole_mask).item() == 0
    prediction = torch.rand(1, 3, 4, 4, requires_grad=True)
    loss = masked_mse(prediction, target, torch.zeros(1, 1, 4, 4))
    loss.backward()
    assert loss.item() == 0 and torch.all(prediction.grad == 0)


def test_discriminator_bce_hand_values():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    # -log sigmoid(x) = softplus(-x); -log(1 - sigmoid(x)) = softplus(x)
    expected = (softplus(-2) + softplus(1)) / 2 + (softplus(0.5) + softplus(-3)) / 2
    assert discriminator_bce(real, fake).item() == pytest.approx(expected, rel=1e-6)
    # one-sided smoothing 0.1: real targets 0.9, fake targets stay 0
    smoothed_real = sum(0.9 * softplus(-x) + 0.1 * softplus(x) for x in (2.0, -1.0)) / 2
    expected = smoothed_real + (softplus(0.5) + softplus(-3)) / 2
    assert discriminator_bce(real, fake, 0.1).item() == pytest.approx(expected, rel=1e-6)


def test_generator_bce_is_non_saturating():
    fake = torch.tensor([-4.0, 0.0, 3.0])
    expected = (softplus(4) + softplus(0) + softplus(-3)) / 3
    assert generator_bce(fake).item() == pytest.approx(expected, rel=1e-6)


def test_wgan_losses():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-2.0, 0.5, 0.0])
    assert wgan_critic_loss(real, fake).item() == pytest.approx(-0.5 - 2.0)
    assert wgan_generator_loss(fake).item() == pytest.approx(0.5)


def test_inpainting_generator_loss_is_plain_weighted_sum():
    loss = inpainting_generator_loss(torch.tensor(0.02), torch.tensor(0.7), 4e-4)
    assert loss.item() == pytest.approx(0.02 + 4e-4 * 0.7)  # GLCIC eq. 3, not halved
    weighted = inpainting_generator_loss(torch.tensor(0.02), torch.tensor(0.7), 1e-3, 0.999)
    assert weighted.item() == pytest.approx(0.999 * 0.02 + 1e-3 * 0.7)


def test_losses_return_fp32_from_bf16_under_autocast():
    logits = torch.randn(8).bfloat16()
    image = torch.rand(2, 3, 8, 8).bfloat16()
    hole_mask = torch.ones(2, 1, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [
            masked_mse(image, image.flip(-1), hole_mask),
            discriminator_bce(logits, logits),
            generator_bce(logits),
            wgan_critic_loss(logits, logits),
            wgan_generator_loss(logits),
        ]
    for loss in losses:
        assert loss.dtype == torch.float32 and loss.dim() == 0 and torch.isfinite(loss)
    # fp32 accuracy: the bf16 logits, upcast, give the fp32 answer
    assert losses[2].item() == pytest.approx(generator_bce(logits.float()).item(), rel=1e-6)


def test_clamp_weights():
    critic = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 1))
    with torch.no_grad():
        for parameter in critic.parameters():
            parameter.copy_(torch.linspace(-1, 1, parameter.numel()).view_as(parameter))
    before = [parameter.clone() for parameter in critic.parameters()]
    clamp_weights_(critic, 0.05)
    for old, new in zip(before, critic.parameters(), strict=True):
        assert new.abs().max() <= 0.05
        inside = old.abs() <= 0.05
        assert torch.equal(new[inside], old[inside])
        assert torch.equal(new[~inside], 0.05 * old[~inside].sign())
