"""Building what the loop trains: the Accelerator, the nets and their optimisers, prepared together.

DDP prepares both nets in one call; DeepSpeed (the launcher's ACCELERATE_USE_DEEPSPEED=true, or
run.deepspeed_config) gets one engine per net from ganpaint/train/deepspeed.py.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from torch import nn

from ganpaint.config import ConfigError, OptimConfig, RunConfig, TrainConfig
from ganpaint.models import build_nets
from ganpaint.train.steps import Trainables


def make_accelerator(run: RunConfig) -> Accelerator:
    """One Accelerator per process; CPU when asked or when no GPU is present."""
    use_cpu = run.cpu or not torch.cuda.is_available()
    if use_cpu and run.mixed_precision == "fp16":
        raise ConfigError("config key 'run.mixed_precision': fp16 needs a GPU; use bf16 on the CPU")
    if use_cpu and run.sync_batchnorm and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError(
            "config key 'run.sync_batchnorm': SyncBatchNorm needs GPUs (torch "
            "supports it only for CUDA modules)"
        )
    if deepspeed_requested(run):
        accelerator = _deepspeed_module(run).make_accelerator(run, use_cpu)
    else:
        # broadcast_buffers: BN running statistics follow rank 0 (the DDP default), so every rank
        # validates and exports the same net; run.sync_batchnorm makes the batch statistics global.
        accelerator = Accelerator(
            cpu=use_cpu,
            mixed_precision="no" if run.mixed_precision == "fp32" else run.mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=True)],
        )
    # `accelerate launch --multi_gpu` without cpu=True on a CPU machine silently starts
    # unsynchronised single processes: refuse that instead of training N separate models.
    expected = int(os.environ.get("WORLD_SIZE", 1))
    if accelerator.num_processes != expected:
        raise ConfigError(
            f"accelerate started {accelerator.num_processes} process(es) but "
            f"WORLD_SIZE is {expected}: check the launch configuration"
        )
    return accelerator


def deepspeed_requested(run: RunConfig) -> bool:
    """The launcher asked for DeepSpeed (accelerate launch --config_file launch/deepspeed_*.yaml),
    or the config names a DeepSpeed JSON."""
    launcher = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return launcher or bool(run.deepspeed_config)


def _deepspeed_module(run: RunConfig):
    """ganpaint.train.deepspeed, imported only when asked for (it imports deepspeed itself)."""
    try:
        from ganpaint.train import deepspeed
    except ImportError as error:
        raise ConfigError(
            f"DeepSpeed was requested (ACCELERATE_USE_DEEPSPEED or "
            f"run.deepspeed_config={run.deepspeed_config!r}) but cannot be imported "
            f"({error}): pip install deepspeed"
        ) from None
    return deepspeed


def build_optimizer(name: str, parameters, lr: float, optim: OptimConfig) -> torch.optim.Optimizer:
    if name == "adadelta":
        # Zeiler's Adadelta as GLCIC trains it; lr=1.0 is the method's own (unit) step scale.
        return torch.optim.Adadelta(parameters, lr=lr, weight_decay=optim.weight_decay)
    return torch.optim.Adam(
        parameters, lr=lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay
    )


def critic_clamp(config: TrainConfig) -> float:
    """The WGAN seed's rule: +-0.03 with several critic steps per G step, else +-0.05."""
    if config.loss.clamp > 0:
        return config.loss.clamp
    return 0.03 if config.schedule.critic_steps > 1 else 0.05


def build_trainables(
    config: TrainConfig, accelerator: Accelerator, fill_rgb: torch.Tensor
) -> Trainables:
    """Nets (channels_last, SyncBatchNorm, torch.compile as configured) and optimisers, prepared."""
    set_seed(config.run.seed)  # same initial weights on every rank and in every re-run
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    generator, discriminator = nets.generator, nets.discriminator
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    if config.run.sync_batchnorm and accelerator.num_processes > 1:
        generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator)
        discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(discriminator)
    # DeepSpeed needs contiguous parameters (it broadcasts them as bytes, then flattens them into
    # its buffers); channels_last inputs still select the channels_last convolution kernels.
    if config.run.channels_last and not deepspeed:
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    optim = config.optim
    generator_optimizer = build_optimizer(
        optim.generator, generator.parameters(), optim.generator_lr, optim
    )
    discriminator_optimizer = build_optimizer(
        optim.discriminator, discriminator.parameters(), optim.discriminator_lr, optim
    )
    if config.run.compile:
        generator, discriminator = torch.compile(generator), torch.compile(discriminator)
    prepared = (generator, discriminator, generator_optimizer, discriminator_optimizer)
    if deepspeed:
        prepared = _deepspeed_module(config.run).prepare(config, accelerator, *prepared)
    else:
        prepared = accelerator.prepare(*prepared)
    generator, discriminator, generator_optimizer, discriminator_optimizer = prepared
    return Trainables(
        accelerator=accelerator,
        generator=generator,
        discriminator=discriminator,
        generator_optimizer=generator_optimizer,
        discriminator_optimizer=discriminator_optimizer,
        loss=config.loss,
        local_px=config.masks.local_px,
        fill_rgb=fill_rgb.to(accelerator.device),
        critic_clamp=critic_clamp(config),
        accumulation=optim.grad_accum_steps,
        global_and_local=config.model.family == "glcic",
        deepspeed=deepspeed,
        hole_fill=config.model.hole_fill,
    )
