"""Inference weights: each trained net as safetensors with the config needed to rebuild it.

An export file is self-contained: its safetensors metadata holds the resolved training config, the
dataset mean colour (the hole fill), the step and which net it is, so `ganpaint inpaint --weights
FILE` needs nothing else; a caption model's file also holds its tokenizer (JSON). Loading never
unpickles anything, and metadata that does not describe the weights (edited by hand, another net's
file) is refused in one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from ganpaint import config as config_lib
from ganpaint.completion import HoleFill, complete
from ganpaint.config import ConfigError, TrainConfig
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

    @property
    def conditioning(self) -> str:
        """What the generator takes besides image and hole: "caption" or "none"."""
        return "caption" if self.family.captions else "none"

    def complete(
        self, images: torch.Tensor, hole_mask: torch.Tensor, tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, completed) for images [N,3,H,W] in [0,1] and hole_mask [N,1,H,W] (and,
        for caption families, token ids [N, T] from `encode_captions`)."""
        hole_fill = self.hole_fill.to(images.device)
        return complete(
            self.generator, images, hole_mask, hole_fill, self.family.predicts_center, tokens
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
    def hole_fill(self) -> HoleFill:
        """The net's input fill (model.hole_fill), as in training."""
        return HoleFill.of(self.config.model, self.fill_rgb)

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


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _read(file: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(ganpaint metadata, tensors) of an export file."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            text = (handle.metadata() or {}).get("ganpaint")
        state = load_file(str(file))
    except Exception as error:
        raise UserError(f"{file}: unreadable safetensors file ({_first_line(error)})") from None
    if text is None:
        raise UserError(f"{file}: not a ganpaint export (no 'ganpaint' metadata)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise UserError(f"{file}: its 'ganpaint' metadata is not a JSON object")
    return meta, state


def _metadata_config(meta: dict, file: Path) -> TrainConfig:
    if not isinstance(meta.get("config"), dict):
        raise UserError(f"{file}: no training config in its metadata")
    try:
        config = config_lib.from_dict(meta["config"])
        config_lib.validate(config)
    except ConfigError as error:
        raise UserError(f"{file}: metadata {error}") from None
    except (OmegaConfBaseException, ValueError, TypeError) as error:  # unknown key, wrong type
        raise UserError(f"{file}: metadata config: {_first_line(error)}") from None
    return config


def _metadata_mean(meta: dict, file: Path) -> tuple[float, float, float]:
    mean_rgb = meta.get("mean_rgb")
    valid = (
        isinstance(mean_rgb, list)
        and len(mean_rgb) == 3
        and all(isinstance(value, (int, float)) and 0 <= value <= 1 for value in mean_rgb)
    )
    if not valid:
        raise UserError(
            f"{file}: metadata 'mean_rgb' (the hole fill colour) must be three numbers in [0, 1]"
        )
    return tuple(float(value) for value in mean_rgb)


def _metadata_choice(
    meta: dict, key: str, default: str, allowed: tuple[str, ...], file: Path
) -> str:
    value = meta.get(key, default)
    if value not in allowed:
        raise UserError(f"{file}: metadata {key!r} must be one of {', '.join(allowed)}")
    return value


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Exported:
    """Rebuild the generator from a run dir, its export/ dir, or a generator .safetensors file."""
    file = _resolve(path)
    meta, state = _read(file)
    net = _metadata_choice(meta, "net", "generator", ("generator", "discriminator"), file)
    if net != "generator":
        raise UserError(
            f"{file}: this is a discriminator; inference needs the generator ({GENERATOR_FILE})"
        )
    config = _metadata_config(meta, file)
    mean_rgb = _metadata_mean(meta, file)
    step = meta.get("step")
    if not isinstance(step, int) or step < 0:
        raise UserError(f"{file}: metadata 'step' must be a whole number >= 0")
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    try:
        nets.generator.load_state_dict(state)
    except RuntimeError as error:
        # torch lists every mismatch over many lines; the first names the problem
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else _first_line(error)
        raise UserError(
            f"{file}: the weights do not fit the {config.model.family} net its metadata "
            f"describes (model.width={config.model.width}): {detail[:200]}"
        ) from None
    generator = nets.generator.to(device).eval()
    tokenizer = _metadata_tokenizer(meta, file) if "tokenizer" in meta else None
    return Exported(generator, config, mean_rgb, step, tokenizer)


def _metadata_tokenizer(meta: dict, file: Path) -> object:
    if not isinstance(meta["tokenizer"], str):
        raise UserError(f"{file}: metadata 'tokenizer' must be the tokenizer's JSON text")
    try:
        return tokenizer_from_json(meta["tokenizer"])
    except Exception as error:  # tokenizers raises its own exception type for bad JSON
        raise UserError(
            f"{file}: metadata 'tokenizer' is not a tokenizer ({_first_line(error)})"
        ) from None
