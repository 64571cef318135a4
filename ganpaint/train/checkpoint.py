"""Training checkpoints: saved by every rank, renamed into place atomically, the newest K kept.

Layout: RUN/checkpoints/step-00001000/{generator,discriminator}.safetensors, optimizers.pt (optimiser
and loss-scaler state: tensors and plain values only, read back with weights_only=True) and
state.json (step, resolved config, health counters). A crash mid-save leaves a `.tmp` directory
that is ignored and removed by the next save, so the last good checkpoint is never touched.

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
        suffix = path.name[len(PREFIX):]
        if suffix.isdigit() and (path / "state.json").is_file():
            found.append((int(suffix), path))
    return sorted(found)


def latest(run_dir: str | Path) -> Path | None:
    steps = saved_steps(run_dir)
    return steps[-1][1] if steps else None


def _plain(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    module = getattr(module, "_orig_mod", module)
    return {key: value.detach().cpu().contiguous() for key, value in module.state_dict().items()}


def save(parts: Trainables, run_dir: str | Path, step: int, config: TrainConfig, keep: int,
         extra: dict | None = None) -> Path:
    """Write checkpoint `step` (call on every rank; rank 0 writes the DDP-replicated state)."""
    accelerator = parts.accelerator
    root = checkpoint_root(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not final.exists():
        tmp = root / f"{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, model in (("generator", parts.generator), ("discriminator", parts.discriminator)):
            save_file(_plain(accelerator.unwrap_model(model)), str(tmp / f"{name}.safetensors"))
        optimizers = {
            "generator": parts.generator_optimizer.state_dict(),
            "discriminator": parts.discriminator_optimizer.state_dict(),
        }
        if accelerator.scaler is not None:
            optimizers["scaler"] = accelerator.scaler.state_dict()
        torch.save(optimizers, tmp / "optimizers.pt")
        state = {"step": step, "config": config_lib.to_dict(config),
                 "health": {"skipped": parts.health.skipped}, **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        tmp.rename(final)
        _prune(run_dir, keep)
    accelerator.wait_for_everyone()
    return final


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
    """Restore nets, optimisers and scaler from checkpoint `path`; returns its state.json."""
    accelerator = parts.accelerator
    state = read_state(path)
    for name, model in (("generator", parts.generator), ("discriminator", parts.discriminator)):
        module = accelerator.unwrap_model(model)
        module = getattr(module, "_orig_mod", module)
        module.load_state_dict(load_file(str(path / f"{name}.safetensors"), device="cpu"))
    # Optimizer.load_state_dict moves each state tensor to its parameter's device.
    optimizers = torch.load(path / "optimizers.pt", map_location="cpu",
                            weights_only=True)
    parts.generator_optimizer.load_state_dict(optimizers["generator"])
    parts.discriminator_optimizer.load_state_dict(optimizers["discriminator"])
    if accelerator.scaler is not None and "scaler" in optimizers:
        accelerator.scaler.load_state_dict(optimizers["scaler"])
    parts.health.skipped = int(state.get("health", {}).get("skipped", 0))
    return state


def check_compatible(saved: dict, current: TrainConfig, path: Path) -> None:
    """Refuse to resume into nets of another shape (one line naming the keys)."""
    differences = config_lib.shaping_differences(config_lib.from_dict(saved["config"]), current)
    if differences:
        raise UserError(
            f"{path} was trained with other model-shaping settings ({'; '.join(differences)}): "
            "use a new run.dir, or the original values")
