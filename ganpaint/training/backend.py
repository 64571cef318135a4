"""The training backend: the few things a step, a checkpoint and the export ask of the engine.

Two implementations share this interface: `DDPBackend` below (accelerate's DDP, and plain single
process) and `DeepSpeedBackend` (ganpaint/training/deepspeed.py, one ZeRO engine per net). The step
functions, the checkpoint module and the loop call these methods and never ask which one runs.

`TrainState` is what training changes: the prepared nets and optimisers and the run's health
counters (ganpaint/training/guard.py, kept on the device). What stays fixed during a run (loss
weights, geometry, hole fill) is `steps.StepSettings`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from safetensors.torch import load_file, save_file
from torch import nn

from ganpaint import losses
from ganpaint.config import RunConfig
from ganpaint.models import Nets
from ganpaint.models.layers import cpu_state_dict, plain_module
from ganpaint.training import rendezvous
from ganpaint.training.guard import (
    Health,
    guarded_step,
    optimizer_state_tensors,
    place_for_device_steps,
)
from ganpaint.training.integrity import CheckpointDamaged, describe

Losses = dict[str, torch.Tensor]


def accelerate_precision(run: RunConfig) -> str:
    """accelerate's name for run.mixed_precision ("no" for fp32)."""
    return "no" if run.mixed_precision == "fp32" else run.mixed_precision


@dataclass(frozen=True)
class BatchGeometry:
    """The global batch and its accumulation: what an engine that sizes its own batches needs."""

    global_batch: int  # data.batch_size: images per optimiser step over all processes
    accumulation: int  # optim.grad_accum_steps

    def micro_batch(self, processes: int) -> int:
        return self.global_batch // (processes * self.accumulation)


@dataclass
class TrainState:
    """The prepared nets and optimisers (DDP-wrapped, DeepSpeed engines or plain) and health."""

    backend: Backend
    generator: nn.Module
    discriminator: nn.Module
    generator_optimizer: torch.optim.Optimizer
    discriminator_optimizer: torch.optim.Optimizer
    health: Health = field(default_factory=Health)

    def __post_init__(self) -> None:
        # Called without DDP hooks when the generator is judged: no gradient all-reduce for D.
        # Unwrapped from DDP or DeepSpeed only, so a compiled D stays compiled there too.
        self.plain_discriminator = plain_module(self.discriminator, keep_compiled=True)

    @property
    def accelerator(self) -> Accelerator:
        return self.backend.accelerator

    def nets(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {
            "generator": self.generator_optimizer,
            "discriminator": self.discriminator_optimizer,
        }


class Backend(abc.ABC):
    """One distributed engine. Every method that says so is a collective: call it on every rank."""

    name: ClassVar[str]  # recorded in checkpoints
    label: ClassVar[str]  # for messages
    # DeepSpeed broadcasts and flattens parameters as bytes: they must stay contiguous.
    channels_last_parameters: ClassVar[bool] = True
    # run.compile is honoured (on CUDA); an engine whose wrapping is untested with it trains eagerly.
    compiles_nets: ClassVar[bool] = True

    def __init__(self, accelerator: Accelerator, run: RunConfig) -> None:
        self.accelerator = accelerator
        self.run = run  # the run section: precision, engine settings, where settings came from

    @abc.abstractmethod
    def prepare(
        self, nets: Nets, optimizers: tuple[torch.optim.Optimizer, ...], batch: BatchGeometry
    ) -> TrainState:
        """Wrap both nets and their optimisers for this engine."""

    @abc.abstractmethod
    def forward_backward(
        self, model: nn.Module, loss_fn: Callable[[], Losses], scale: float, last: bool
    ) -> Losses:
        """Run `loss_fn()` and backpropagate its "loss" times `scale` into `model`'s gradients.

        `last` marks the final micro-batch of an update (gradients are synchronised there)."""

    @abc.abstractmethod
    def apply_update(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor
    ) -> torch.Tensor:
        """Step the optimiser on the accumulated gradients unless `loss` is non-finite (on any
        rank); clear them. Returns a bool tensor on the device: True if the update was applied."""

    @abc.abstractmethod
    def clamp_(self, model: nn.Module, limit: float) -> None:
        """WGAN weight clipping of `model` to [-limit, limit] (collective)."""

    @abc.abstractmethod
    def save(self, state: TrainState, directory: Path) -> dict:
        """Write nets and optimisers into `directory` (collective); returns the facts a resume
        must match, recorded in the checkpoint's state.json."""

    @abc.abstractmethod
    def load(self, state: TrainState, directory: Path, facts: dict) -> None:
        """Restore nets and optimisers from `directory` (collective); UserError if `facts` (from
        `save`) do not fit this run, CheckpointDamaged (or any exception) if a file is damaged."""

    @abc.abstractmethod
    def export_nets(self, state: TrainState, build: Callable[[], Nets]) -> Nets:
        """Both nets with fp32 weights for the inference export (collective); `build` makes a
        fresh pair of the run's nets, for engines that hold their weights elsewhere."""

    @abc.abstractmethod
    def held_tensors(self, state: TrainState) -> dict[str, list[torch.Tensor]]:
        """Every tensor of the nets and optimisers that this rank holds, in the same groups on
        every rank ("generator weights", "generator optimiser state", ...): what a checkpoint
        saves, checked for inf and NaN before it is."""

    @abc.abstractmethod
    def checkpoint_bytes(self, state: TrainState) -> int:
        """About how many bytes this rank writes into a checkpoint (from the tensor sizes)."""


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


@contextmanager
def _naming(file_name: str) -> Iterator[None]:
    """Any error while reading `file_name` becomes one CheckpointDamaged line naming it."""
    try:
        yield
    except Exception as error:
        raise CheckpointDamaged(f"{file_name}: {describe(error)}") from None


class DDPBackend(Backend):
    """accelerate's DDP (or one plain process): autocast, no_sync while accumulating, and a
    non-finite guard that every rank agrees on, decided on the device (no host sync)."""

    name, label = "ddp", "DDP"

    @classmethod
    def make_accelerator(cls, run: RunConfig, use_cpu: bool, trackers: list[str]) -> Accelerator:
        # broadcast_buffers: BN running statistics follow rank 0 (the DDP default), so every rank
        # validates and exports the same net; run.sync_batchnorm makes the batch statistics global.
        return Accelerator(
            cpu=use_cpu,
            mixed_precision=accelerate_precision(run),
            kwargs_handlers=[
                DistributedDataParallelKwargs(broadcast_buffers=True),
                rendezvous.process_group_kwargs(run),
            ],
            log_with=trackers or None,
            project_dir=run.dir,
        )

    def prepare(
        self, nets: Nets, optimizers: tuple[torch.optim.Optimizer, ...], batch: BatchGeometry
    ) -> TrainState:
        prepared = self.accelerator.prepare(nets.generator, nets.discriminator, *optimizers)
        state = TrainState(self, *prepared)
        for optimizer in state.optimizers().values():
            place_for_device_steps(optimizer, self.accelerator.device)
        return state

    def forward_backward(
        self, model: nn.Module, loss_fn: Callable[[], Losses], scale: float, last: bool
    ) -> Losses:
        accelerator = self.accelerator
        with nullcontext() if last else accelerator.no_sync(model):
            with accelerator.autocast():
                values = loss_fn()
            accelerator.backward(values["loss"] * scale)
        return values

    def apply_update(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor
    ) -> torch.Tensor:
        finite = self._all_finite(loss)
        guarded_step(optimizer, finite)
        optimizer.zero_grad(set_to_none=True)
        return finite

    def _all_finite(self, loss: torch.Tensor) -> torch.Tensor:
        # Every rank must take the same decision or DDP diverges: the flags are summed by a
        # collective on the device, never read on the host.
        flag = torch.isfinite(loss).float().reshape(1)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum")
        return (flag == self.accelerator.num_processes).reshape(())

    def clamp_(self, model: nn.Module, limit: float) -> None:
        losses.clamp_weights_(plain_module(model), limit)

    def save(self, state: TrainState, directory: Path) -> dict:
        """Rank 0 writes both nets as safetensors and the optimisers (+ fp16 scaler) as tensors."""
        if self.accelerator.is_main_process:
            for name, model in state.nets().items():
                save_file(cpu_state_dict(model), str(directory / f"{name}.safetensors"))
            optimizers = {name: opt.state_dict() for name, opt in state.optimizers().items()}
            if self.accelerator.scaler is not None:
                optimizers["scaler"] = self.accelerator.scaler.state_dict()
            torch.save(optimizers, directory / "optimizers.pt")
        return {}

    def load(self, state: TrainState, directory: Path, facts: dict) -> None:
        """CheckpointDamaged naming the file if one is missing, torn or does not fit."""
        for name, model in state.nets().items():
            with _naming(f"{name}.safetensors"):
                weights = load_file(str(directory / f"{name}.safetensors"), device="cpu")
                plain_module(model).load_state_dict(weights)
        with _naming("optimizers.pt"):
            # Optimizer.load_state_dict moves each state tensor to its parameter's device.
            saved = torch.load(directory / "optimizers.pt", map_location="cpu", weights_only=True)
            for name, optimizer in state.optimizers().items():
                optimizer.load_state_dict(saved[name])
                place_for_device_steps(optimizer, self.accelerator.device)
            if self.accelerator.scaler is not None and "scaler" in saved:
                self.accelerator.scaler.load_state_dict(saved["scaler"])

    def export_nets(self, state: TrainState, build: Callable[[], Nets]) -> Nets:
        return Nets(plain_module(state.generator), plain_module(state.discriminator))

    def held_tensors(self, state: TrainState) -> dict[str, list[torch.Tensor]]:
        groups = {}
        for name, model in state.nets().items():
            # state_dict, not parameters: BatchNorm's running statistics can overflow too.
            groups[f"{name} weights"] = list(plain_module(model).state_dict().values())
            optimizer = state.optimizers()[name]
            groups[f"{name} optimiser state"] = optimizer_state_tensors(optimizer)
        return groups

    def checkpoint_bytes(self, state: TrainState) -> int:
        if not self.accelerator.is_main_process:
            return 0  # rank 0 writes the whole checkpoint
        return sum(tensor_bytes(tensors) for tensors in self.held_tensors(state).values())
