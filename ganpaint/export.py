"""Inference weights: each trained net as safetensors with the config needed to rebuild it.

An export file is self-contained: its safetensors metadata holds the resolved training config, the
dataset mean colour (the hole fill) and the step, so `ganpaint inpaint --weights FILE` needs nothing
else. Loading never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ganpaint import config as config_lib
from ganpaint.config import TrainConfig
from ganpaint.errors import UserError

GENERATOR_FILE = "generator.safetensors"
DISCRIMINATOR_FILE = "discriminator.safetensors"


@dataclass
class Exported:
    generator: nn.Module  # eval mode, on the requested device
    config: TrainConfig
    mean_rgb: tuple[float, float, float]
    step: int

    @property
    def fill_rgb(self) -> torch.Tensor:
        """The hole fill colour the net was trained with, [3] in [0, 1]."""
        if self.config.model.hole_fill == "zero":
            return torch.zeros(3)
        return torch.tensor(self.mean_rgb)

    @property
    def hole_fill(self) -> str:
        """How the net's input hole is filled (`completion.prefill`): mean, zero, pyramid, ..."""
        return self.config.model.hole_fill


def _state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    # Unwrap DDP / torch.compile wrappers so names match a freshly built net.
    module = getattr(module, "module", module)
    module = getattr(module, "_orig_mod", module)
    return {
        name: tensor.detach().cpu().contiguous() for name, tensor in module.state_dict().items()
    }


def save_export(
    directory: str | Path,
    generator: nn.Module,
    discriminator: nn.Module,
    config: TrainConfig,
    mean_rgb: tuple[float, float, float],
    step: int,
) -> None:
    """Write generator.safetensors, discriminator.safetensors and config.yaml (atomically, each)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"config": config_lib.to_dict(config), "mean_rgb": list(mean_rgb), "step": step}
    for name, module in ((GENERATOR_FILE, generator), (DISCRIMINATOR_FILE, discriminator)):
        tmp = directory / (name + ".tmp")
        save_file(
            _state_dict(module),
            str(tmp),
            metadata={"ganpaint": json.dumps({**meta, "net": name.split(".")[0]})},
        )
        tmp.replace(directory / name)
    config_lib.save(config, directory / "config.yaml")


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    for candidate in (path / "export" / GENERATOR_FILE, path / GENERATOR_FILE, path):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"no exported generator at {path} (expected RUN_DIR/export/{GENERATOR_FILE} "
        "or a .safetensors file written by ganpaint train)"
    )


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Exported:
    """Rebuild the generator from a run dir, its export/ dir, or a generator .safetensors file."""
    from ganpaint.models import build_nets  # models import torch.nn layers: keep this module light

    file = _resolve(path)
    try:
        with safe_open(str(file), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["ganpaint"])
        state = load_file(str(file))
    except (KeyError, json.JSONDecodeError):
        raise UserError(f"{file}: not a ganpaint export (no 'ganpaint' metadata)") from None
    except Exception as error:
        raise UserError(f"{file}: unreadable safetensors file ({error})") from None
    config = config_lib.from_dict(meta["config"])
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    nets.generator.load_state_dict(state)
    generator = nets.generator.to(device).eval()
    return Exported(generator, config, tuple(meta["mean_rgb"]), int(meta["step"]))
