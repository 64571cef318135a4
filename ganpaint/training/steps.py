"""One function per phase kind: a training step on a batch, returning its detached losses.

A step receives what training changes (`TrainState`: nets, optimisers, health), what stays fixed
(`StepSettings`: family, loss weights, geometry, hole fill) and a list of micro-batches (more than
one under gradient accumulation; WGAN takes `critic_steps` groups of them). It updates the net(s)
of its phase through the backend (ganpaint/training/backend.py: DDP or DeepSpeed, never asked which)
and returns a dict of scalar tensors, still on the device.

Logit conventions: discriminators return logits; adversarial losses are BCE-with-logits.
For the generator's adversarial term the discriminator is called unwrapped (no DDP hooks) with its
parameters frozen, so its gradients are neither computed nor all-reduced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ganpaint import losses
from ganpaint.completion import HoleFill, complete
from ganpaint.config import LossConfig, ScheduleConfig
from ganpaint.data.masks import crop_local
from ganpaint.models import Family, StepKind
from ganpaint.training.backend import Losses, TrainState


@dataclass
class Batch:
    images: torch.Tensor  # [N,3,H,W] float in [0,1] on the device
    hole_mask: torch.Tensor  # [N,1,H,W] float, 1 = hole
    local_origin: torch.Tensor  # [N,2] long, (top, left) of each local area
    latent: torch.Tensor | None = None  # generation families: z [N, latent_dim]
    tokens: torch.Tensor | None = None  # caption families: token ids [N, T] int64


@dataclass(frozen=True)
class StepSettings:
    """What a step needs besides the state, fixed for the whole run."""

    family: Family
    loss: LossConfig
    local_px: int
    hole_fill: HoleFill  # the generator's input fill, on the device
    critic_clamp: float  # WGAN weight clamp
    accumulation: int = 1  # micro-batches per optimiser update


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
    state: TrainState,
    net: str,
    micro_batches: list[Batch],
    loss_fn: Callable[[Batch], Losses],
) -> Losses:
    """Backward `loss_fn(batch)["loss"]` over micro-batches into `net` ("generator" or
    "discriminator"), then step its optimiser unless the loss is non-finite (counted in health,
    on the device: nothing here waits for the GPU).

    Gradients are synchronised on the last micro-batch only. Under fp16 the scaler may also skip a
    step (gradient overflow): that is routine loss scaling, not counted as a bad step.
    """
    model, optimizer = state.nets()[net], state.optimizers()[net]
    count = len(micro_batches)
    totals: Losses = {}
    for index, batch in enumerate(micro_batches):
        values = state.backend.forward_backward(
            model, lambda batch=batch: loss_fn(batch), 1 / count, last=index == count - 1
        )
        for key, value in values.items():
            totals[key] = totals.get(key, 0) + value.detach().float() / count
    state.health.record(state.backend.apply_update(model, optimizer, totals["loss"]), net)
    return {f"{net}_{key}": value for key, value in totals.items()}


def _complete(
    state: TrainState, settings: StepSettings, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    return complete(
        state.generator,
        batch.images,
        batch.hole_mask,
        settings.hole_fill,
        settings.family.predicts_center,
        batch.tokens,
    )


def _reconstruction(settings: StepSettings, prediction: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The masked MSE, or Context Encoders' overlap-weighted one when loss.overlap_px > 0."""
    loss = settings.loss
    return losses.overlap_mse(
        prediction, batch.images, batch.hole_mask, loss.overlap_px, loss.overlap_weight
    )


def _judge(
    settings: StepSettings, discriminator: nn.Module, images: torch.Tensor, batch: Batch
) -> torch.Tensor:
    """Discriminator logits for images (batch.images or their completions), fed as the family
    declares (image + local patch, or the local patch alone; with the captions)."""
    local_patch = crop_local(images, batch.local_origin, settings.local_px)
    return discriminator(*settings.family.judge_inputs(images, local_patch, batch.tokens))


def _real_and_fake(
    state: TrainState, settings: StepSettings, batch: Batch, fake: torch.Tensor, wasserstein: bool
) -> Losses:
    """The discriminator's (or critic's) loss on real images against `fake` ones."""
    real = _judge(settings, state.discriminator, batch.images, batch)
    fake = _judge(settings, state.discriminator, fake, batch)
    if wasserstein:
        loss = losses.wgan_critic_loss(real, fake)
        return {"loss": loss, "real_score": real.mean(), "fake_score": fake.mean()}
    loss = losses.discriminator_bce(real, fake, settings.loss.label_smoothing)
    return {"loss": loss, "real_logit": real.mean(), "fake_logit": fake.mean()}


def completion_step(
    state: TrainState, settings: StepSettings, micro_batches: list[Batch]
) -> Losses:
    """GLCIC phase 1: the completion network alone on the masked MSE (paper eq. 1)."""

    def loss_fn(batch: Batch) -> Losses:
        prediction, _ = _complete(state, settings, batch)
        mse = _reconstruction(settings, prediction, batch)
        return {"loss": settings.loss.reconstruction_weight * mse, "mse": mse}

    return _update(state, "generator", micro_batches, loss_fn)


def discriminator_step(
    state: TrainState, settings: StepSettings, micro_batches: list[Batch]
) -> Losses:
    """GLCIC phase 2: the discriminators alone against the fixed completion network."""

    def loss_fn(batch: Batch) -> Losses:
        with torch.no_grad():
            _, completed = _complete(state, settings, batch)
        return _real_and_fake(state, settings, batch, completed, wasserstein=False)

    return _update(state, "discriminator", micro_batches, loss_fn)


def _inpainting_joint(
    state: TrainState, settings: StepSettings, micro_batches: list[Batch], wasserstein: bool
) -> Losses:
    """D (or critic) update on completed images, then G on reconstruction + weighted adversarial.

    Without accumulation the generator's forward pass is made once and reused by both updates
    (its graph is kept through the D update, which only sees a detached copy).
    """
    reuse = len(micro_batches) == 1
    stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def discriminator_loss(batch: Batch) -> Losses:
        with torch.set_grad_enabled(reuse):
            stash[id(batch)] = _complete(state, settings, batch)
        fake = stash[id(batch)][1].detach()
        return _real_and_fake(state, settings, batch, fake, wasserstein)

    def generator_loss(batch: Batch) -> Losses:
        if reuse:
            prediction, completed = stash.pop(id(batch))
        else:
            prediction, completed = _complete(state, settings, batch)
        mse = _reconstruction(settings, prediction, batch)
        with frozen(state.plain_discriminator):
            fake = _judge(settings, state.plain_discriminator, completed, batch)
        adversarial = (
            losses.wgan_generator_loss(fake) if wasserstein else losses.generator_bce(fake)
        )
        loss = losses.inpainting_generator_loss(
            mse, adversarial, settings.loss.adversarial_weight, settings.loss.reconstruction_weight
        )
        return {"loss": loss, "mse": mse, "adversarial": adversarial}

    result = _update(state, "discriminator", micro_batches, discriminator_loss)
    if wasserstein:
        state.backend.clamp_(state.discriminator, settings.critic_clamp)
    return {**result, **_update(state, "generator", micro_batches, generator_loss)}


def adversarial_step(
    state: TrainState, settings: StepSettings, micro_batches: list[Batch]
) -> Losses:
    """GLCIC phase 3 (paper eq. 2) and Context Encoder: D on real vs completed, then G on
    lambda_rec * MSE + lambda_adv * BCE."""
    return _inpainting_joint(state, settings, micro_batches, wasserstein=False)


def critic_step(state: TrainState, settings: StepSettings, micro_batches: list[Batch]) -> Losses:
    """WGAN U-Net: `critic_steps` clamped critic updates (one micro-batch group each), then G.

    The generator update reuses the last group, so the batches per step are critic_steps groups.
    """
    size = settings.accumulation
    groups = [micro_batches[i : i + size] for i in range(0, len(micro_batches), size)]

    def critic_only(batch: Batch) -> Losses:
        with torch.no_grad():
            _, completed = _complete(state, settings, batch)
        return _real_and_fake(state, settings, batch, completed, wasserstein=True)

    result: Losses = {}
    for group in groups[:-1]:
        result = _update(state, "discriminator", group, critic_only)
        state.backend.clamp_(state.discriminator, settings.critic_clamp)
    return {**result, **_inpainting_joint(state, settings, groups[-1], wasserstein=True)}


def generation_step(
    state: TrainState, settings: StepSettings, micro_batches: list[Batch]
) -> Losses:
    """DCGAN: D on real vs generated faces (separate batches, as Radford et al.), then G."""
    reuse = len(micro_batches) == 1
    stash: dict[int, torch.Tensor] = {}

    def discriminator_loss(batch: Batch) -> Losses:
        with torch.set_grad_enabled(reuse):
            stash[id(batch)] = state.generator(batch.latent)
        real_logits = state.discriminator(batch.images)
        fake_logits = state.discriminator(stash[id(batch)].detach())
        loss = losses.discriminator_bce(real_logits, fake_logits, settings.loss.label_smoothing)
        return {"loss": loss, "real_logit": real_logits.mean(), "fake_logit": fake_logits.mean()}

    def generator_loss(batch: Batch) -> Losses:
        fake = stash.pop(id(batch)) if reuse else state.generator(batch.latent)
        with frozen(state.plain_discriminator):
            adversarial = losses.generator_bce(state.plain_discriminator(fake))
        return {"loss": adversarial}

    result = _update(state, "discriminator", micro_batches, discriminator_loss)
    return {**result, **_update(state, "generator", micro_batches, generator_loss)}


StepFunction = Callable[[TrainState, StepSettings, list[Batch]], Losses]
STEP_FUNCTIONS: dict[StepKind, StepFunction] = {
    StepKind.COMPLETION: completion_step,
    StepKind.DISCRIMINATOR: discriminator_step,
    StepKind.ADVERSARIAL: adversarial_step,
    StepKind.CRITIC: critic_step,
    StepKind.GENERATION: generation_step,
}


def critic_steps(schedule: ScheduleConfig) -> int:
    """Critic updates per generator update: schedule.critic_steps, a setting of the families with
    CRITIC phases only (wgan_unet.CriticSettings); 1 for the others, whose D updates once."""
    return getattr(schedule, "critic_steps", 1)


def micro_batches_per_step(kind: StepKind, critic_steps: int, accumulation: int) -> int:
    """Micro-batches a step of this kind consumes (WGAN: one group per critic update)."""
    return (critic_steps if kind is StepKind.CRITIC else 1) * accumulation
