"""One function per phase kind: a training step on a batch, returning its detached losses.

A step receives the prepared nets and optimisers (`Trainables`) and a list of micro-batches (more
than one under gradient accumulation; WGAN takes `critic_steps` groups of them). It updates the
net(s) of its phase and returns a dict of scalar tensors, still on the device: nothing here waits
for the GPU except the non-finite guard, which must agree across ranks before an optimiser steps.
Under DeepSpeed the nets are engines that run their own backward and optimiser step, and the
engine's gradient-norm check is the guard (ganpaint/train/deepspeed.py).

Logit conventions (DESIGN.md): discriminators return logits; adversarial losses are BCE-with-logits.
For the generator's adversarial term the discriminator is called unwrapped (no DDP hooks) with its
parameters frozen, so its gradients are neither computed nor all-reduced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import nn

from ganpaint import losses
from ganpaint.completion import complete
from ganpaint.config import LossConfig
from ganpaint.data.masks import crop_local

Losses = dict[str, torch.Tensor]


@dataclass
class Batch:
    images: torch.Tensor  # [N,3,H,W] float in [0,1] on the device
    hole_mask: torch.Tensor  # [N,1,H,W] float, 1 = hole
    local_origin: torch.Tensor  # [N,2] long, (top, left) of each local area
    latent: torch.Tensor | None = None  # dcgan: z [N, latent_dim]


@dataclass
class Health:
    """Non-finite losses seen so far: updates skipped in all, in a row, and the last culprit."""

    skipped: int = 0
    in_a_row: int = 0
    last_bad: str = ""


@dataclass
class Trainables:
    accelerator: Accelerator
    generator: nn.Module  # prepared: DDP-wrapped when distributed, or a DeepSpeed engine
    discriminator: nn.Module
    generator_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer
    loss: LossConfig
    local_px: int
    fill_rgb: torch.Tensor  # [3] on the device
    critic_clamp: float  # wgan weight clamp
    accumulation: int = 1  # micro-batches per optimiser update
    global_and_local: bool = False  # GLCIC: D(image, local_patch); else D(local_patch)
    deepspeed: bool = False  # the nets are DeepSpeed engines (one per net)
    health: Health = field(default_factory=Health)
    hole_fill: str = "mean"  # model.hole_fill: the generator's input fill (completion.prefill)

    def __post_init__(self) -> None:
        self.plain_discriminator = self.accelerator.unwrap_model(self.discriminator)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of `module` need no gradient inside the block (restored after)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


def _update(
    parts: Trainables,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    name: str,
    micro_batches: list[Batch],
    loss_fn: Callable[[Batch], Losses],
) -> Losses:
    """Backward `loss_fn(batch)["loss"]` over micro-batches, then step unless it is non-finite.

    DDP gradients are all-reduced on the last micro-batch only. Under fp16 the scaler may also skip
    a step (gradient overflow): that is routine loss scaling, not counted as a bad step. A DeepSpeed
    engine skips (and this counts) an update whose gradients are non-finite.
    """
    count = len(micro_batches)
    totals: Losses = {}
    for index, batch in enumerate(micro_batches):
        values = _backward(parts, model, loss_fn, batch, count, last=index == count - 1)
        for key, value in values.items():
            totals[key] = totals.get(key, 0) + value.detach().float() / count
    if _step(parts, model, optimizer, totals["loss"]):
        parts.health.in_a_row = 0
    else:
        parts.health.skipped += 1
        parts.health.in_a_row += 1
        parts.health.last_bad = name
    return {f"{name}_{key}": value for key, value in totals.items()}


def _backward(
    parts: Trainables,
    model: nn.Module,
    loss_fn: Callable[[Batch], Losses],
    batch: Batch,
    count: int,
    last: bool,
) -> Losses:
    """Forward and backward of one micro-batch, its loss scaled by 1 / count."""
    if parts.deepspeed:
        values = loss_fn(batch)
        model.backward(values["loss"] / count, scale_wrt_gas=False)
        model.step()  # counts the micro-batch; the optimiser runs at the accumulation boundary
        return values
    accelerator = parts.accelerator
    with nullcontext() if last else accelerator.no_sync(model):
        with accelerator.autocast():
            values = loss_fn(batch)
        accelerator.backward(values["loss"] / count)
    return values


def _step(
    parts: Trainables, model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor
) -> bool:
    """Apply the accumulated gradients unless the loss is non-finite; True if applied."""
    if parts.deepspeed:
        # The engine has stepped at the boundary, or skipped (and cleared) non-finite gradients.
        return model.was_step_applied()
    finite = _all_finite(parts, loss)
    if finite:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return finite


def _clamp_critic(parts: Trainables) -> None:
    """WGAN weight clipping after a critic update (DeepSpeed: of its fp32 masters too)."""
    if parts.deepspeed:
        from ganpaint.train import deepspeed

        deepspeed.clamp_weights_(parts.discriminator, parts.critic_clamp)
    else:
        losses.clamp_weights_(parts.plain_discriminator, parts.critic_clamp)


def _all_finite(parts: Trainables, loss: torch.Tensor) -> bool:
    # The one host sync of a step: every rank must take the same decision or DDP diverges.
    flag = torch.isfinite(loss).float().reshape(1)
    if parts.accelerator.num_processes > 1:
        flag = parts.accelerator.reduce(flag, reduction="sum")
    return int(flag.item()) == parts.accelerator.num_processes


def _complete(parts: Trainables, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    return complete(parts.generator, batch.images, batch.hole_mask, parts.fill_rgb, parts.hole_fill)


def _judge(
    parts: Trainables, discriminator: nn.Module, images: torch.Tensor, origin: torch.Tensor
) -> torch.Tensor:
    """Discriminator logits for images: GLCIC sees image + local patch, the others the patch only."""
    local_patch = crop_local(images, origin, parts.local_px)
    if parts.global_and_local:
        return discriminator(images, local_patch)
    return discriminator(local_patch)


def _discriminator_losses(parts: Trainables, batch: Batch, fake: torch.Tensor) -> Losses:
    real_logits = _judge(parts, parts.discriminator, batch.images, batch.local_origin)
    fake_logits = _judge(parts, parts.discriminator, fake, batch.local_origin)
    loss = losses.discriminator_bce(real_logits, fake_logits, parts.loss.label_smoothing)
    return {"loss": loss, "real_logit": real_logits.mean(), "fake_logit": fake_logits.mean()}


def reconstruction_step(parts: Trainables, micro_batches: list[Batch]) -> Losses:
    """GLCIC phase 1: the completion network alone on the masked MSE (paper eq. 1)."""

    def loss_fn(batch: Batch) -> Losses:
        prediction, _ = _complete(parts, batch)
        mse = losses.masked_mse(prediction, batch.images, batch.hole_mask)
        return {"loss": parts.loss.reconstruction_weight * mse, "mse": mse}

    return _update(parts, parts.generator, parts.generator_optimizer, "g", micro_batches, loss_fn)


def discriminator_step(parts: Trainables, micro_batches: list[Batch]) -> Losses:
    """GLCIC phase 2: the discriminators alone against the fixed completion network."""

    def loss_fn(batch: Batch) -> Losses:
        with torch.no_grad():
            _, completed = _complete(parts, batch)
        return _discriminator_losses(parts, batch, completed)

    return _update(
        parts, parts.discriminator, parts.discriminator_optimizer, "d", micro_batches, loss_fn
    )


def _critic_losses(parts: Trainables, batch: Batch, fake: torch.Tensor) -> Losses:
    real_scores = _judge(parts, parts.discriminator, batch.images, batch.local_origin)
    fake_scores = _judge(parts, parts.discriminator, fake, batch.local_origin)
    return {
        "loss": losses.wgan_critic_loss(real_scores, fake_scores),
        "real_score": real_scores.mean(),
        "fake_score": fake_scores.mean(),
    }


def _discriminator_then_generator(
    parts: Trainables,
    micro_batches: list[Batch],
    discriminator_loss: Callable[[Batch], Losses],
    generator_loss: Callable[[Batch], Losses],
    clamp_critic: bool = False,
) -> Losses:
    """The adversarial pair of updates every joint step makes, in this order."""
    result = _update(
        parts,
        parts.discriminator,
        parts.discriminator_optimizer,
        "d",
        micro_batches,
        discriminator_loss,
    )
    if clamp_critic:
        _clamp_critic(parts)
    generator_update = _update(
        parts, parts.generator, parts.generator_optimizer, "g", micro_batches, generator_loss
    )
    return {**result, **generator_update}


def _inpainting_joint(parts: Trainables, micro_batches: list[Batch], wasserstein: bool) -> Losses:
    """D (or critic) update on completed images, then G on reconstruction + weighted adversarial.

    Without accumulation the generator's forward pass is made once and reused by both updates
    (its graph is kept through the D update, which only sees a detached copy).
    """
    reuse = len(micro_batches) == 1
    stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def discriminator_loss(batch: Batch) -> Losses:
        with torch.set_grad_enabled(reuse):
            stash[id(batch)] = _complete(parts, batch)
        fake = stash[id(batch)][1].detach()
        if wasserstein:
            return _critic_losses(parts, batch, fake)
        return _discriminator_losses(parts, batch, fake)

    def generator_loss(batch: Batch) -> Losses:
        prediction, completed = stash.pop(id(batch)) if reuse else _complete(parts, batch)
        mse = losses.masked_mse(prediction, batch.images, batch.hole_mask)
        with frozen(parts.plain_discriminator):
            fake = _judge(parts, parts.plain_discriminator, completed, batch.local_origin)
        adversarial = (
            losses.wgan_generator_loss(fake) if wasserstein else losses.generator_bce(fake)
        )
        loss = parts.loss.reconstruction_weight * mse + parts.loss.adversarial_weight * adversarial
        return {"loss": loss, "mse": mse, "adversarial": adversarial}

    return _discriminator_then_generator(
        parts, micro_batches, discriminator_loss, generator_loss, clamp_critic=wasserstein
    )


def glcic_joint_step(parts: Trainables, micro_batches: list[Batch]) -> Losses:
    """GLCIC phase 3: D on real vs completed, then C on MSE + alpha * BCE (paper eq. 2)."""
    return _inpainting_joint(parts, micro_batches, wasserstein=False)


def adversarial_joint_step(parts: Trainables, micro_batches: list[Batch]) -> Losses:
    """Context Encoder: D on the centre patch, G on lambda_rec * L2 + lambda_adv * BCE."""
    return _inpainting_joint(parts, micro_batches, wasserstein=False)


def wgan_joint_step(parts: Trainables, micro_batches: list[Batch]) -> Losses:
    """WGAN U-Net: `critic_steps` clamped critic updates (one micro-batch group each), then G.

    The generator update reuses the last group, so the batches per step are critic_steps groups.
    """
    size = parts.accumulation
    groups = [micro_batches[i : i + size] for i in range(0, len(micro_batches), size)]
    result: Losses = {}
    for group in groups[:-1]:
        result = _update(
            parts,
            parts.discriminator,
            parts.discriminator_optimizer,
            "d",
            group,
            lambda batch: _critic_only(parts, batch),
        )
        _clamp_critic(parts)
    joint = _inpainting_joint(parts, groups[-1], wasserstein=True)
    return {**result, **joint}


def _critic_only(parts: Trainables, batch: Batch) -> Losses:
    with torch.no_grad():
        _, completed = _complete(parts, batch)
    return _critic_losses(parts, batch, completed)


def dcgan_step(parts: Trainables, micro_batches: list[Batch]) -> Losses:
    """DCGAN: D on real vs generated faces (separate batches, as Radford et al.), then G."""
    reuse = len(micro_batches) == 1
    stash: dict[int, torch.Tensor] = {}

    def discriminator_loss(batch: Batch) -> Losses:
        with torch.set_grad_enabled(reuse):
            stash[id(batch)] = parts.generator(batch.latent)
        real_logits = parts.discriminator(batch.images)
        fake_logits = parts.discriminator(stash[id(batch)].detach())
        loss = losses.discriminator_bce(real_logits, fake_logits, parts.loss.label_smoothing)
        return {"loss": loss, "real_logit": real_logits.mean(), "fake_logit": fake_logits.mean()}

    def generator_loss(batch: Batch) -> Losses:
        fake = stash.pop(id(batch)) if reuse else parts.generator(batch.latent)
        with frozen(parts.plain_discriminator):
            adversarial = losses.generator_bce(parts.plain_discriminator(fake))
        return {"loss": adversarial}

    return _discriminator_then_generator(parts, micro_batches, discriminator_loss, generator_loss)


STEP_FUNCTIONS: dict[str, Callable[[Trainables, list[Batch]], Losses]] = {
    "reconstruction": reconstruction_step,
    "discriminator": discriminator_step,
    "glcic_joint": glcic_joint_step,
    "adversarial_joint": adversarial_joint_step,
    "wgan_joint": wgan_joint_step,
    "dcgan": dcgan_step,
}


def batches_per_step(kind: str, critic_steps: int) -> int:
    """Micro-batch groups a step of this kind consumes (WGAN: one per critic update)."""
    return critic_steps if kind == "wgan_joint" else 1
