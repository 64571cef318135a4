"""Inference weights: each trained net as safetensors with the config needed to rebuild it.

An export file is self-contained: its safetensors metadata holds the resolved training config, the
dataset mean colour (the hole fill) and the step, so `ganpaint inpaint --weights FILE` needs nothing
else; a caption model's file also holds its tokenizer (JSON). Loading never unpickles anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ganpaint import config as config_lib
from ganpaint.completion import complete
from ganpaint.config import TrainConfig
from ganpaint.data.captions import encode, tokenizer_from_json
from ganpaint.errors import UserError
from ganpaint.files import atomic_path
from ganpaint.models import Family, build_nets, registry
from ganpaint.models.layers import cpu_state_dict

GENERATOR_FILE = "generator.safetensors"
DISCRIMINATOR_FILE = "discriminator.safetensors"


@dataclass
class Exported:
    generator: nn.Module  # eval mode, on the requested device
    config: TrainConfig
    mean_rgb: tuple[float, float, float]
    step: int
    tokenizer: object | None = None  # caption families: the `tokenizers.Tokenizer` trained with

    @property
    def family(self) -> Family:
        return registry.get(self.config.model.family)

    def complete(
        self, images: torch.Tensor, hole_mask: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, completed) for images [N,3,H,W] in [0,1] and hole_mask [N,1,H,W] (and,
        for caption families, token ids [N, T] from `encode_captions`)."""
        fill_rgb = self.fill_rgb.to(images)
        return complete(
            self.generator, images, hole_mask, fill_rgb, self.family.predicts_center, tokens
        )

    def encode_captions(self, captions: list[str]) -> torch.Tensor:
        """Token ids [N, data.caption_tokens] of captions, by the tokenizer the net trained with,
        on the generator's device."""
        if self.tokenizer is None:
            raise UserError(f"{self.family.name} export holds no tokenizer: re-export it")
        max_tokens = self.config.data.caption_tokens
        ids = [encode(self.tokenizer, caption, max_tokens) for caption in captions]
        device = next(self.generator.parameters()).device
        return torch.from_numpy(np.stack(ids)).to(device)

    @property
    def fill_rgb(self) -> torch.Tensor:
        """The hole fill colour the net was trained with, [3] in [0, 1]."""
        if self.config.model.hole_fill == "zero":
            return torch.zeros(3)
        return torch.tensor(self.mean_rgb)


def save_export(
    directory: str | Path,
    generator: nn.Module,
    discriminator: nn.Module,
    config: TrainConfig,
    mean_rgb: tuple[float, float, float],
    step: int,
    tokenizer: str | None = None,
) -> None:
    """Write generator.safetensors, discriminator.safetensors and config.yaml (atomically, each).

    `tokenizer`: a caption model's tokenizer JSON, kept in the metadata."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"config": config_lib.to_dict(config), "mean_rgb": list(mean_rgb), "step": step}
    if tokenizer is not None:
        meta["tokenizer"] = tokenizer
    for name, module in ((GENERATOR_FILE, generator), (DISCRIMINATOR_FILE, discriminator)):
        with atomic_path(directory / name) as partial:
            save_file(
                cpu_state_dict(module),
                str(partial),
                metadata={"ganpaint": json.dumps({**meta, "net": name.split(".")[0]})},
            )
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
    tokenizer = tokenizer_from_json(meta["tokenizer"]) if "tokenizer" in meta else None
    return Exported(generator, config, tuple(meta["mean_rgb"]), int(meta["step"]), tokenizer)
