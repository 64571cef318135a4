"""DeepSpeed ZeRO-1/2 for the two trained nets: one plugin and one engine per net, safe checkpoints.

accelerate wraps one model per DeepSpeed engine, so the generator and the discriminator each get
a `DeepSpeedPlugin` and a `prepare` of their own, and each engine runs its own backward and step
(`accelerator.backward` would always drive the first engine). What differs from the DDP path:

- Precision: a bf16 engine holds bf16 parameters and buffers (fp32 master weights live in its ZeRO
  optimiser partitions) and accelerate's autocast is off. Hooks on each net cast floating inputs
  to the parameter dtype and outputs back to fp32, so the step functions, the validation grid and
  the frozen-discriminator call run unchanged and the losses stay fp32.
- Non-finite guard: at the accumulation boundary the engine measures the global gradient norm
  and skips the update (and clears the gradients) when it is inf/NaN; `was_step_applied()` reports
  it and the loop counts it like a skipped DDP step. It catches what the DDP loss check catches (a
  non-finite loss makes non-finite gradients) plus gradient overflows with a finite loss. Configs
  that switch it off (`bf16.check_grad_overflow`, `zero_optimization.compute_grad_norm` false) and
  fp16 (whose loss scaler skips overflowing steps as routine) are refused.
- Checkpoints: each engine saves its own files (`step-N/generator/`, `step-N/discriminator/`, one
  optimiser partition per rank) and loads them through a checkpoint engine whose `torch.load` is
  `weights_only=True`, allowing the three DeepSpeed classes its optimiser files hold, nothing else.
- WGAN clipping and the export read or write the fp32 masters (collectives: call on every rank).

Supported: ZeRO stages 1 and 2 (every rank holds every parameter), bf16 or fp32, no offload, the
optimisers of `optim.*`. A launcher must start the processes (`accelerate launch` or torchrun).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import pickle
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import deepspeed as deepspeed_package
import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param
from deepspeed.utils.tensor_fragment import fragment_address
from packaging.version import Version
from torch import nn

from ganpaint import losses
from ganpaint.config import ConfigError, RunConfig
from ganpaint.errors import UserError
from ganpaint.models import Nets
from ganpaint.training import rendezvous
from ganpaint.training.backend import (
    Backend,
    BatchGeometry,
    Losses,
    TrainState,
    accelerate_precision,
    plain_module,
    tensor_bytes,
)
from ganpaint.training.guard import NET_NAMES, optimizer_state_tensors
from ganpaint.training.integrity import CheckpointDamaged

# Verified with 0.19.8; the non-finite guard relies on bf16.check_grad_overflow (recent versions).
MIN_DEEPSPEED = "0.19"
SUPPORTED_STAGES = (1, 2)
# Set from the training config; a DeepSpeed config may leave them out, say "auto", or agree.
BATCH_KEYS = ("train_batch_size", "gradient_accumulation_steps", "train_micro_batch_size_per_gpu")
# Everything DeepSpeed 0.19 pickles into a ZeRO-1/2 checkpoint besides tensors and containers.
CHECKPOINT_GLOBALS = (LossScaler, ZeroStageEnum, fragment_address)


def _config_file(run: RunConfig) -> str | None:
    """The DeepSpeed JSON in use: run.deepspeed_config, else the launcher's, else none."""
    launcher_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    return run.deepspeed_config or (launcher_file if launcher_file != "none" else None)


def _origin(run: RunConfig) -> str:
    """Where the DeepSpeed settings come from, for error messages."""
    return _config_file(run) or "the accelerate launch config"


def _read_json(path: str) -> dict:
    try:
        values = json.loads(Path(path).read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read this DeepSpeed config ({error})") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict) or "zero_optimization" not in values:
        raise ConfigError(f"{path}: a DeepSpeed config needs a 'zero_optimization' section")
    return values


def check_config(ds_config: dict, precision: str, origin: str) -> None:
    """Refuse DeepSpeed settings the loop cannot honour (one line naming `origin` and the key)."""
    for key in ("optimizer", "scheduler"):
        if key in ds_config:
            raise ConfigError(
                f"{origin}: remove '{key}': the optimisers come from optim.* (one "
                "per net) and the learning rates are constant"
            )
    zero = ds_config.get("zero_optimization", {})
    if zero.get("stage") not in SUPPORTED_STAGES:
        raise ConfigError(
            f"{origin}: zero_optimization.stage {zero.get('stage')!r} is not "
            "supported: use 1 or 2 (ZeRO-3 partitions the parameters the loop reads)"
        )
    for part in ("offload_optimizer", "offload_param"):
        if (zero.get(part) or {}).get("device", "none") not in ("none", None):
            raise ConfigError(f"{origin}: zero_optimization.{part} is not supported: remove it")
    for dtype in ("bf16", "fp16"):
        enabled = (ds_config.get(dtype) or {}).get("enabled", "auto")
        if enabled != "auto" and bool(enabled) != (precision == dtype):
            raise ConfigError(
                f"{origin}: {dtype}.enabled is {enabled} but run.mixed_precision is "
                f"{precision}: leave it out or 'auto'"
            )
    if (ds_config.get("bf16") or {}).get("check_grad_overflow") is False:
        raise ConfigError(f"{origin}: bf16.check_grad_overflow false disables the non-finite guard")
    if zero.get("compute_grad_norm") is False:
        raise ConfigError(
            f"{origin}: zero_optimization.compute_grad_norm false disables the non-finite guard"
        )
    if ds_config.get("gradient_clipping", "auto") not in ("auto", 0, 0.0):
        raise ConfigError(
            f"{origin}: gradient_clipping is not supported (the DDP path does not "
            "clip either): leave it out"
        )


def make_plugin(run: RunConfig) -> DeepSpeedPlugin:
    """One net's plugin: from the DeepSpeed JSON if any, else from the launcher's ACCELERATE_*."""
    path = _config_file(run)
    if path:
        file_values = _read_json(path)
        plugin = DeepSpeedPlugin(hf_ds_config=copy.deepcopy(file_values))
        for key in BATCH_KEYS:  # accelerate writes 1 for a missing key: keep "not given" visible
            plugin.deepspeed_config[key] = file_values.get(key, "auto")
    else:
        plugin = DeepSpeedPlugin()
    ds_config = plugin.deepspeed_config
    check_config(ds_config, run.mixed_precision, _origin(run))
    # accelerate fills an 'auto' gradient_clipping with 1.0; the loop never clips.
    ds_config["gradient_clipping"] = 0.0
    if run.mixed_precision == "bf16":
        # DeepSpeed casts parameters only; BatchNorm needs its running statistics in the same dtype.
        ds_config.setdefault("data_types", {})["buffer_dtype"] = "bf16"
    return plugin


def make_accelerator(run: RunConfig, use_cpu: bool, trackers: list[str] = ()) -> Accelerator:
    """The Accelerator with one DeepSpeed plugin per net (gloo when there is no GPU)."""
    if run.mixed_precision == "fp16":
        raise ConfigError(
            "config key 'run.mixed_precision': fp16 is not supported with DeepSpeed "
            "(its loss scaler hides non-finite steps): use bf16"
        )
    if run.cpu:
        raise ConfigError(
            "config key 'run.cpu': DeepSpeed uses the GPUs where present; without a "
            "GPU it runs on the CPU by itself: drop run.cpu"
        )
    if Version(deepspeed_package.__version__) < Version(MIN_DEEPSPEED):
        raise ConfigError(
            f"DeepSpeed {deepspeed_package.__version__} is installed; ganpaint needs >= "
            f"{MIN_DEEPSPEED}: pip install -U deepspeed"
        )
    if "LOCAL_RANK" not in os.environ:
        raise ConfigError(
            f"DeepSpeed ({_origin(run)}) needs a launcher: start the run with "
            "`accelerate launch` or torchrun, not `ganpaint train`"
        )
    group_backend = None
    if use_cpu:
        # The shared-memory all-reduce op is a 35 s JIT build on first use and only speeds up
        # CPU collectives; gloo does the same work. (Accelerator(cpu=True) would drop DeepSpeed.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        group_backend = "gloo"
    handlers = [rendezvous.process_group_kwargs(run, group_backend)]
    plugins = {name: make_plugin(run) for name in NET_NAMES}
    return Accelerator(
        mixed_precision=accelerate_precision(run),
        deepspeed_plugins=plugins,
        kwargs_handlers=handlers,
        log_with=list(trackers) or None,
        project_dir=run.dir,
    )


def _claim(ds_config: dict, key: str, value: int, origin: str, source: str) -> None:
    current = ds_config.get(key, "auto")
    if current != "auto" and current != value:
        raise ConfigError(
            f"{origin}: {key} is {current} but {source} makes it {value}: leave it "
            "out, 'auto', or the same value"
        )
    ds_config[key] = value


def set_batch_geometry(
    plugin: DeepSpeedPlugin, batch: BatchGeometry, processes: int, run: RunConfig
) -> None:
    """Micro batch = the loop's per-process batch, accumulation = optim.grad_accum_steps."""
    accumulation = batch.accumulation
    origin, ds_config = _origin(run), plugin.deepspeed_config
    _claim(ds_config, "train_batch_size", batch.global_batch, origin, "data.batch_size")
    _claim(ds_config, "gradient_accumulation_steps", accumulation, origin, "optim.grad_accum_steps")
    _claim(
        ds_config,
        "train_micro_batch_size_per_gpu",
        batch.micro_batch(processes),
        origin,
        f"data.batch_size / ({processes} processes x {accumulation} accumulation steps)",
    )


def _cast(value, dtype: torch.dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(item, dtype) for item in value)
    return value


def _cast_at_the_boundary(module: nn.Module) -> None:
    """Floating inputs to the parameter dtype, floating outputs to fp32 (as accelerate's DDP)."""
    dtype = next(module.parameters()).dtype
    if dtype == torch.float32:
        return
    module.register_forward_pre_hook(lambda _, args: _cast(args, dtype))
    module.register_forward_hook(lambda _, args, output: _cast(output, torch.float32))


def _allowed_globals() -> AbstractContextManager:
    """torch >= 2.5 scopes the allow-list to one load; torch 2.4 only has a process-wide one."""
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(list(CHECKPOINT_GLOBALS))
    torch.serialization.add_safe_globals(list(CHECKPOINT_GLOBALS))
    return nullcontext()


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with weights_only=True (nothing unpickles code)."""

    def load(self, path: str, map_location=None):
        try:
            with _allowed_globals():
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as error:
            lines = [line for line in str(error).splitlines() if "GLOBAL" in line]
            raise CheckpointDamaged(
                f"{path}: refused: it holds more than tensors and DeepSpeed's "
                f"checkpoint classes ({(lines or ['weights_only load failed'])[0]})"
            ) from None


@torch.no_grad()
def clamp_weights_(engine: nn.Module, limit: float) -> None:
    """WGAN weight clipping of the fp32 masters and of the module's copies (collective).

    Clipping only `engine.module` would be undone at the next optimiser step, which rewrites
    the module's parameters from the (unclipped) masters.
    """
    for parameter in engine.module.parameters():
        master = safe_get_full_fp32_param(parameter)
        if master is not None:
            safe_set_full_fp32_param(parameter, master.clamp_(-limit, limit))
    losses.clamp_weights_(engine.module, limit)


def full_precision_state(engine: nn.Module) -> dict[str, torch.Tensor]:
    """The net's state_dict on the CPU in fp32, parameters from the fp32 masters (collective)."""
    module = plain_module(engine)
    state = {key: value.detach() for key, value in module.state_dict().items()}
    for name, parameter in module.named_parameters():
        master = safe_get_full_fp32_param(parameter)  # an all-reduce of the ZeRO fragments
        if master is not None:
            state[name] = master
    return {
        key: (value.float() if value.is_floating_point() else value).cpu().contiguous()
        for key, value in state.items()
    }


class DeepSpeedBackend(Backend):
    """One DeepSpeed engine per net: the engine runs backward and step, and its gradient-norm
    check is the non-finite guard."""

    name, label = "deepspeed", "DeepSpeed"
    channels_last_parameters = False
    compiles_nets = False  # torch.compile inside DeepSpeed's engines has not been run

    @classmethod
    def make_accelerator(cls, run: RunConfig, use_cpu: bool, trackers: list[str]) -> Accelerator:
        return make_accelerator(run, use_cpu, trackers)

    def prepare(
        self, nets: Nets, optimizers: tuple[torch.optim.Optimizer, ...], batch: BatchGeometry
    ) -> TrainState:
        """One engine (and optimiser wrapper) per net, each from its own plugin."""
        accelerator, prepared = self.accelerator, []
        for name, net, optimizer in zip(
            NET_NAMES, (nets.generator, nets.discriminator), optimizers, strict=True
        ):
            accelerator.state.select_deepspeed_plugin(name)
            set_batch_geometry(
                accelerator.state.deepspeed_plugin, batch, accelerator.num_processes, self.run
            )
            engine, wrapper = accelerator.prepare(net, optimizer)
            _cast_at_the_boundary(engine.module)
            engine.checkpoint_engine = SafeCheckpointEngine(engine._config)
            prepared.append((engine, wrapper))
        accelerator.state.select_deepspeed_plugin("generator")
        (generator, generator_optimizer), (discriminator, discriminator_optimizer) = prepared
        return TrainState(
            self, generator, discriminator, generator_optimizer, discriminator_optimizer
        )

    def forward_backward(
        self, model: nn.Module, loss_fn: Callable[[], Losses], scale: float, last: bool
    ) -> Losses:
        values = loss_fn()
        model.backward(values["loss"] * scale, scale_wrt_gas=False)
        model.step()  # counts the micro-batch; the optimiser runs at the accumulation boundary
        return values

    def apply_update(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, loss: torch.Tensor
    ) -> torch.Tensor:
        # The engine has stepped at the boundary, or skipped (and cleared) non-finite gradients:
        # DeepSpeed keeps its own guard, which reads its overflow flag on the host.
        return torch.tensor(model.was_step_applied(), device=self.accelerator.device)

    def clamp_(self, model: nn.Module, limit: float) -> None:
        clamp_weights_(model, limit)

    def save(self, state: TrainState, directory: Path) -> dict:
        """Both engines into `directory`/{generator,discriminator}/ (explicit tags, so neither
        overwrites the other's `latest`); every rank writes its optimiser partition."""
        self.accelerator.wait_for_everyone()  # the directory exists before any rank writes
        for name, engine in state.nets().items():
            engine.save_checkpoint(str(directory), tag=name, save_latest=False)
        self.accelerator.wait_for_everyone()
        return self._facts(state)

    def _facts(self, state: TrainState) -> dict:
        """What a resume must match: ZeRO optimiser partitions are cut per process."""
        return {
            "processes": self.accelerator.num_processes,
            "zero_stage": int(state.generator.zero_optimization_stage()),
        }

    def load(self, state: TrainState, directory: Path, facts: dict) -> None:
        current = self._facts(state)
        if facts != current:
            raise UserError(
                f"{directory} was saved by DeepSpeed with {facts}, this run has {current}: "
                "resume with the same process count and ZeRO stage, or use a new run.dir"
            )
        for name, engine in state.nets().items():
            load_path, _ = engine.load_checkpoint(str(directory), tag=name)
            if load_path is None:
                raise CheckpointDamaged(
                    f"{directory / name}: DeepSpeed found no checkpoint to load"
                )

    def export_nets(self, state: TrainState, build: Callable[[], Nets]) -> Nets:
        """Fresh fp32 copies of both nets holding the engines' fp32 master weights."""
        nets = build()
        nets.generator.load_state_dict(full_precision_state(state.generator))
        nets.discriminator.load_state_dict(full_precision_state(state.discriminator))
        return nets

    def held_tensors(self, state: TrainState) -> dict[str, list[torch.Tensor]]:
        """The module's (bf16) weights and this rank's ZeRO partitions: its fp32 masters and their
        optimiser state."""
        groups = {}
        for name, engine in state.nets().items():
            masters, optimizer_state = _partitions(engine)
            groups[f"{name} weights"] = [*plain_module(engine).state_dict().values(), *masters]
            groups[f"{name} optimiser state"] = optimizer_state
        return groups

    def checkpoint_bytes(self, state: TrainState) -> int:
        """Every rank writes its partitions; rank 0 also the modules' weights."""
        total = 0
        for engine in state.nets().values():
            masters, optimizer_state = _partitions(engine)
            total += tensor_bytes(masters) + tensor_bytes(optimizer_state)
            if self.accelerator.is_main_process:
                total += tensor_bytes(list(plain_module(engine).state_dict().values()))
        return total


def _partitions(engine: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """This rank's fp32 master partitions and their optimiser state: ZeRO-1/2's optimiser (and
    the bf16 ZeRO-1 one) steps a torch optimiser whose parameters are these partitions."""
    inner = engine.optimizer.optimizer
    masters = [parameter for group in inner.param_groups for parameter in group["params"]]
    return masters, optimizer_state_tensors(inner)
