"""Building what the loop trains: the backend (Accelerator + engine), the nets and optimisers.

DDP is the default backend; DeepSpeed is chosen by the launcher (ACCELERATE_USE_DEEPSPEED=true,
e.g. launch/deepspeed_zero2.yaml) or by run.deepspeed_config, and imported only then.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch import nn

from ganpaint.completion import HoleFill
from ganpaint.config import ConfigError, OptimConfig, RunConfig, TrainConfig
from ganpaint.models import Family, build_nets
from ganpaint.training import rendezvous
from ganpaint.training.backend import (
    Backend,
    BatchGeometry,
    DDPBackend,
    TrainState,
    accelerate_precision,
)
from ganpaint.training.steps import StepSettings, critic_steps


def deepspeed_requested(run: RunConfig) -> bool:
    """The launcher asked for DeepSpeed (accelerate launch --config_file launch/deepspeed_*.yaml),
    or the config names a DeepSpeed JSON."""
    launcher = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    return launcher or bool(run.deepspeed_config)


def _backend_class(run: RunConfig) -> type[Backend]:
    if not deepspeed_requested(run):
        return DDPBackend
    try:  # optional dependency: imported only when asked for
        from ganpaint.training.deepspeed import DeepSpeedBackend
    except ImportError as error:
        raise ConfigError(
            f"DeepSpeed was requested (ACCELERATE_USE_DEEPSPEED or "
            f"run.deepspeed_config={run.deepspeed_config!r}) but cannot be imported "
            f"({error}): pip install deepspeed"
        ) from None
    return DeepSpeedBackend


def check_launcher(run: RunConfig, environ: dict[str, str] | None = None) -> None:
    """Refuse launcher settings the run would silently not honour (one line each).

    - Precision: run.mixed_precision is the one source of truth. A launcher asking for another
      (`accelerate launch --mixed_precision bf16`, or a launch config's value) is refused rather
      than ignored; the launcher's "no" is accelerate's default and means "not asked".
    - `accelerate launch --cpu --num_processes N` starts ONE process (accelerate's simple
      launcher), which would train alone while the user expects N.
    """
    environ = os.environ if environ is None else environ
    launcher = environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launcher != "no" and launcher != accelerate_precision(run):
        raise ConfigError(
            f"accelerate launch asks for mixed precision {launcher!r} but run.mixed_precision is "
            f"{run.mixed_precision!r}: the training config decides, so pass "
            f"run.mixed_precision={'fp32' if launcher == 'no' else launcher} or drop the "
            "launcher's --mixed_precision"
        )
    simple_cpu_launch = (
        environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
        and "MASTER_ADDR" in environ  # set by the simple launcher only when num_processes > 1
        and "WORLD_SIZE" not in environ
    )
    if simple_cpu_launch:
        raise ConfigError(
            "`accelerate launch --cpu --num_processes N` starts one process only: for N CPU "
            "processes use `accelerate launch --config_file launch/cpu2.yaml` (multi_gpu with "
            "use_cpu) or `torchrun --nproc_per_node N`"
        )


def make_backend(run: RunConfig, trackers: list[str] | tuple[str, ...] = ()) -> Backend:
    """One backend (and Accelerator) per process; CPU when asked or when no GPU is present.

    `trackers`: accelerate's experiment trackers to log to besides TensorBoard (wandb, ...)."""
    check_launcher(run)
    use_cpu = run.cpu or not torch.cuda.is_available()
    if use_cpu and run.mixed_precision == "fp16":
        raise ConfigError("config key 'run.mixed_precision': fp16 needs a GPU; use bf16 on the CPU")
    if use_cpu and run.sync_batchnorm and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError(
            "config key 'run.sync_batchnorm': SyncBatchNorm needs GPUs (torch "
            "supports it only for CUDA modules)"
        )
    backend_class = _backend_class(run)
    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        # One process may train several runs (the Python API, tests); accelerate keeps one state
        # per process and refuses a second Accelerator of another precision, so each run of a
        # single process starts from a fresh state (a launched process makes one Accelerator).
        AcceleratorState._reset_state(reset_partial_state=True)
    with rendezvous.bounded(run):  # WORLD_SIZE > 1: the group forms within its timeout, or one line
        accelerator = backend_class.make_accelerator(run, use_cpu, list(trackers))
    # `accelerate launch --multi_gpu` without cpu=True on a CPU machine silently starts
    # unsynchronised single processes: refuse that instead of training N separate models.
    expected = int(os.environ.get("WORLD_SIZE", 1))
    if accelerator.num_processes != expected:
        raise ConfigError(
            f"accelerate started {accelerator.num_processes} process(es) but "
            f"WORLD_SIZE is {expected}: check the launch configuration"
        )
    return backend_class(accelerator, run)


def build_optimizer(name: str, parameters, lr: float, optim: OptimConfig) -> torch.optim.Optimizer:
    if name == "adadelta":
        # Zeiler's Adadelta as GLCIC trains it; lr=1.0 is the method's own (unit) step scale.
        return torch.optim.Adadelta(parameters, lr=lr, weight_decay=optim.weight_decay)
    return torch.optim.Adam(
        parameters, lr=lr, betas=(optim.beta1, optim.beta2), weight_decay=optim.weight_decay
    )


def learning_rate_factor(optim: OptimConfig, step: int, total: int) -> float:
    """What the configured learning rates are multiplied by for the step after `step` (0-based)
    of `total`: 1 throughout (optim.lr_decay none), or a cosine from 1 at the first step to 0
    after the last."""
    if optim.lr_decay == "none":
        return 1.0
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def set_learning_rates(state: TrainState, optim: OptimConfig, step: int, total: int) -> None:
    """Every optimiser's rate for the coming step (a host-side float: no device work)."""
    factor = learning_rate_factor(optim, step, total)
    rates = {"generator": optim.generator_lr, "discriminator": optim.discriminator_lr}
    for name, optimizer in state.optimizers().items():
        for group in optimizer.param_groups:
            group["lr"] = rates[name] * factor


def critic_clamp(config: TrainConfig) -> float:
    """The WGAN seed's rule: +-0.03 with several critic steps per G step, else +-0.05."""
    if config.loss.clamp > 0:
        return config.loss.clamp
    return 0.03 if critic_steps(config.schedule) > 1 else 0.05


def compiles(config: TrainConfig, backend: Backend) -> bool:
    """run.compile applies on CUDA under DDP only. On the CPU, inductor's C++ code takes minutes
    and a toolchain to build, and the CPU runs (demos, tests, smoke runs of the GPU presets, which
    turn compile on) are short; DeepSpeed's engines are untested with compiled nets."""
    device = backend.accelerator.device
    return config.run.compile and device.type == "cuda" and backend.compiles_nets


def build_state(config: TrainConfig, backend: Backend) -> TrainState:
    """Nets (SyncBatchNorm, channels_last, torch.compile as configured) and optimisers, prepared
    by the backend. Each net is compiled once; its graphs per phase (train, frozen, no-grad) are
    traced on the phase's first step."""
    set_seed(config.run.seed)  # same initial weights on every rank and in every re-run
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    if config.run.sync_batchnorm and backend.accelerator.num_processes > 1:
        nets.generator = nn.SyncBatchNorm.convert_sync_batchnorm(nets.generator)
        nets.discriminator = nn.SyncBatchNorm.convert_sync_batchnorm(nets.discriminator)
    # Where the backend keeps parameters contiguous, channels_last inputs still select the
    # channels_last convolution kernels.
    if config.run.channels_last and backend.channels_last_parameters:
        nets.generator = nets.generator.to(memory_format=torch.channels_last)
        nets.discriminator = nets.discriminator.to(memory_format=torch.channels_last)
    optim = config.optim
    optimizers = (
        build_optimizer(optim.generator, nets.generator.parameters(), optim.generator_lr, optim),
        build_optimizer(
            optim.discriminator, nets.discriminator.parameters(), optim.discriminator_lr, optim
        ),
    )
    if compiles(config, backend):
        mode = config.run.compile_mode
        nets.generator = torch.compile(nets.generator, mode=mode)
        nets.discriminator = torch.compile(nets.discriminator, mode=mode)
    batch = BatchGeometry(config.data.batch_size, config.optim.grad_accum_steps)
    return backend.prepare(nets, optimizers, batch)


def step_settings(
    config: TrainConfig, family: Family, fill_rgb: torch.Tensor, device: torch.device
) -> StepSettings:
    """What the step functions need besides the state, fixed for the run; `fill_rgb` is the
    colour of a constant hole fill (model.hole_fill mean or zero)."""
    return StepSettings(
        family=family,
        loss=config.loss,
        local_px=config.masks.local_px,
        hole_fill=HoleFill.of(config.model, fill_rgb.to(device)),
        critic_clamp=critic_clamp(config),
        accumulation=config.optim.grad_accum_steps,
    )


def fit_workers(config: TrainConfig, local_processes: int) -> tuple[TrainConfig, str | None]:
    """data.workers capped at the cores this process may use (its share of the node's, less one
    for the training process itself); returns the config to train with and a note if capped."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(0, (cores or 1) // max(1, local_processes) - 1)
    if config.data.workers <= share:
        return config, None
    note = (
        f"data.workers {config.data.workers} capped at {share}: {cores} cores for "
        f"{local_processes} process(es) on this node, one core each for training"
    )
    return dataclasses.replace(config, data=dataclasses.replace(config.data, workers=share)), note
