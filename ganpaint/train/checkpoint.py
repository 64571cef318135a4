"""Training checkpoints: saved by every rank, renamed into place atomically, the newest K kept.

Layout: RUN/checkpoints/step-00001000/{generator,discriminator}.safetensors, optimizers.pt (optimiser
and loss-scaler state: tensors and plain values only, read back with weights_only=True) and
state.json (step, resolved config, health counters). A crash mid-save leaves a `.tmp` directory
that is ignored and removed by the next save, so the last good checkpoint is never touched.
Under DeepSpeed the nets and optimisers are instead the engines' own files, written by every rank
into step-N/{generator,discriminator}/ (ganpaint/train/deepspeed.py), and state.json also records
the process count and ZeRO stage they were partitioned for ("deepspeed").

No RNG state is stored because none is needed: data order, holes and latents are drawn from
generators seeded by (seed, rank, step), so a resumed run draws exactly what it would have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ganpaint import config as config_lib
from ganpaint.config import TrainConfig
from ganpaint.errors import UserError
from ganpaint.train.steps import Trainables

PREFIX = "step-"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def saved_steps(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (no `.tmp`), oldest first."""
    root = checkpoint_root(run_dir)
    found = []
    for path in root.glob(PREFIX + "*") if root.is_dir() else ():
        suffix = path.name[len(PREFIX) :]
        if suffix.isdigit() and (path / "state.json").is_file():
            found.append((int(suffix), path))
    return sorted(found)


def latest(run_dir: str | Path) -> Path | None:
    steps = saved_steps(run_dir)
    return steps[-1][1] if steps else None


def _plain(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    module = getattr(module, "_orig_mod", module)
    return {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}


def save(
    parts: Trainables,
    run_dir: str | Path,
    step: int,
    config: TrainConfig,
    keep: int,
    extra: dict | None = None,
) -> Path:
    """Write checkpoint `step` (call on every rank; rank 0 writes the DDP-replicated state, under
    DeepSpeed every rank writes its optimiser partitions)."""
    accelerator = parts.accelerator
    root = checkpoint_root(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{final.name}.tmp"
    accelerator.wait_for_everyone()
    if not final.exists():
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        state = {
            "step": step,
            "config": config_lib.to_dict(config),
            "health": {"skipped": parts.health.skipped},
            **(extra or {}),
        }
        if parts.deepspeed:
            from ganpaint.train import deepspeed

            accelerator.wait_for_everyone()  # the directory exists before any rank writes into it
            deepspeed.save_engines(parts, tmp)
            accelerator.wait_for_everyone()
            state["deepspeed"] = deepspeed.checkpoint_facts(parts)
        if accelerator.is_main_process:
            if not parts.deepspeed:
                _save_replicated(parts, tmp)
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            tmp.rename(final)
            _prune(run_dir, keep)
    accelerator.wait_for_everyone()
    return final


def _save_replicated(parts: Trainables, directory: Path) -> None:
    """DDP: both nets as safetensors and both optimisers (+ fp16 scaler) in optimizers.pt."""
    accelerator = parts.accelerator
    for name, model in (("generator", parts.generator), ("discriminator", parts.discriminator)):
        save_file(_plain(accelerator.unwrap_model(model)), str(directory / f"{name}.safetensors"))
    optimizers = {
        "generator": parts.generator_optimizer.state_dict(),
        "discriminator": parts.discriminator_optimizer.state_dict(),
    }
    if accelerator.scaler is not None:
        optimizers["scaler"] = accelerator.scaler.state_dict()
    torch.save(optimizers, directory / "optimizers.pt")


def _prune(run_dir: str | Path, keep: int) -> None:
    for _, path in saved_steps(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for stale in checkpoint_root(run_dir).glob(f"{PREFIX}*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def read_state(path: Path) -> dict:
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{path / 'state.json'}: unreadable checkpoint state ({error})") from None


def load(parts: Trainables, path: Path) -> dict:
    """Restore nets, optimisers and scaler from checkpoint `path`; returns its state.json.

    Call on every rank (a collective under DeepSpeed).
    """
    state = read_state(path)
    if ("deepspeed" in state) != parts.deepspeed:
        written, running = ("DeepSpeed", "without") if "deepspeed" in state else ("DDP", "with")
        raise UserError(
            f"{path} was written by a {written} run and cannot be resumed {running} "
            "DeepSpeed: launch it as it was started, or use a new run.dir"
        )
    if parts.deepspeed:
        from ganpaint.train import deepspeed

        deepspeed.load_engines(parts, path, state["deepspeed"])
    else:
        _load_replicated(parts, path)
    parts.health.skipped = int(state.get("health", {}).get("skipped", 0))
    return state


def _load_replicated(parts: Trainables, path: Path) -> None:
    accelerator = parts.accelerator
    for name, model in (("generator", parts.generator), ("discriminator", parts.discriminator)):
        module = accelerator.unwrap_model(model)
        module = getattr(module, "_orig_mod", module)
        module.load_state_dict(load_file(str(path / f"{name}.safetensors"), device="cpu"))
    # Optimizer.load_state_dict moves each state tensor to its parameter's device.
    optimizers = torch.load(path / "optimizers.pt", map_location="cpu", weights_only=True)
    parts.generator_optimizer.load_state_dict(optimizers["generator"])
    parts.discriminator_optimizer.load_state_dict(optimizers["discriminator"])
    if accelerator.scaler is not None and "scaler" in optimizers:
        accelerator.scaler.load_state_dict(optimizers["scaler"])


def export_nets(parts: Trainables, config: TrainConfig) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(generator, discriminator) with fp32 weights for `save_export` (call on every rank).

    DDP: the prepared nets unwrapped. DeepSpeed: fresh nets holding the engines' fp32 master
    weights, gathered from the ZeRO partitions (a collective).
    """
    if parts.deepspeed:
        from ganpaint.train import deepspeed

        return deepspeed.full_precision_nets(parts, config)
    unwrap = parts.accelerator.unwrap_model
    return unwrap(parts.generator), unwrap(parts.discriminator)


def check_compatible(saved: dict, current: TrainConfig, path: Path) -> None:
    """Refuse to resume into nets of another shape (one line naming the keys)."""
    differences = config_lib.shaping_differences(config_lib.from_dict(saved["config"]), current)
    if differences:
        raise UserError(
            f"{path} was trained with other model-shaping settings ({'; '.join(differences)}): "
            "use a new run.dir, or the original values"
        )
