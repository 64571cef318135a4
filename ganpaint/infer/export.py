"""Inference weights: each trained net as safetensors with the config needed to rebuild it.

An export file is self-contained: its safetensors metadata holds the resolved training config, the
dataset mean colour (the hole fill), the step and which net it is, so `ganpaint inpaint --weights
FILE` needs nothing else; a caption model's file also holds its tokenizer (JSON). Loading never
unpickles anything, and metadata that does not describe the weights (edited by hand, another net's
file) is refused in one line naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
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
from ganpaint.errors import UserError, WeightsNotFinite
from ganpaint.files import check_space, install_directory, reporting_full_disk
from ganpaint.models import Family, Nets, build_nets, registry
from ganpaint.models.layers import cpu_state_dict

GENERATOR_FILE = "generator.safetensors"
DISCRIMINATOR_FILE = "discriminator.safetensors"


@dataclass
class Exported:
    generator: nn.Module  # eval mode, on the requested device
    family: Family  # the declaration of config.model.family, resolved once when loading
    config: TrainConfig
    mean_rgb: tuple[float, float, float]
    step: int
    tokenizer: object | None = None  # caption families: the `tokenizers.Tokenizer` trained with

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
    """Write generator.safetensors, discriminator.safetensors and config.yaml as a set: into
    `directory`.tmp-PID beside it, renamed into place once all three are written (the previous
    export moved aside first and deleted after), so a reader finds the old export or the new
    one, whole. Refused before anything is written when a tensor holds inf or NaN
    (WeightsNotFinite) or the files cannot fit on the disk (OutOfSpace); a write that fails
    anyway removes the staging directory.

    `tokenizer`: a caption model's tokenizer JSON, kept in the metadata."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory}: exists and is not a directory (the export goes there)")
    states = {
        GENERATOR_FILE: cpu_state_dict(generator),
        DISCRIMINATOR_FILE: cpu_state_dict(discriminator),
    }
    for name, state in states.items():
        _refuse_non_finite(state, directory / name)
    tensors = [tensor for state in states.values() for tensor in state.values()]
    needed = sum(tensor.numel() * tensor.element_size() for tensor in tensors)
    directory.parent.mkdir(parents=True, exist_ok=True)
    for stale in directory.parent.glob(f"{directory.name}.tmp-*"):  # left by a killed process
        shutil.rmtree(stale, ignore_errors=True)
    check_space(directory.parent, needed + EXPORT_SLACK_BYTES)
    meta = {"config": config_lib.to_dict(config), "mean_rgb": list(mean_rgb), "step": step}
    if tokenizer is not None:
        meta["tokenizer"] = tokenizer
    staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    try:
        with reporting_full_disk(staging):
            staging.mkdir()
            for name, state in states.items():
                metadata = {"ganpaint": json.dumps({**meta, "net": name.split(".")[0]})}
                save_file(state, str(staging / name), metadata=metadata)
            config_lib.save(config, staging / "config.yaml")
        install_directory(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# The metadata (the config, a caption model's tokenizer) and config.yaml, beyond the tensors.
EXPORT_SLACK_BYTES = 1 << 20


def _non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating tensors holding inf or NaN (CPU tensors: no device sync)."""
    return [
        name
        for name, tensor in state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def _refuse_non_finite(state: dict[str, torch.Tensor], file: Path) -> None:
    """WeightsNotFinite naming the file and the first tensor holding inf or NaN."""
    broken = _non_finite(state)
    if broken:
        raise WeightsNotFinite(
            f"{file}: refused: {len(broken)} tensors hold inf or NaN (first: {broken[0][:60]})"
        )


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    for candidate in (path / "export" / GENERATOR_FILE, path / GENERATOR_FILE, path):
        if candidate.is_file():
            return candidate
    raise UserError(
        f"no exported generator at {path} (expected RUN_DIR/export/{GENERATOR_FILE} "
        "or a .safetensors file written by ganpaint train)"
    )


# Error lines quote metadata (a family name, a key, a value): a hand-edited export may hold
# megabytes there, and a one-line error must stay one readable line.
MAX_ERROR_CHARS = 300
# Far above any ganpaint net (the GLCIC paper's discriminators hold 45 M): metadata describing a
# larger net is damaged or hostile, and building it would allocate until the machine runs out.
MAX_PARAMETERS = 2_000_000_000
# Sizes inference allocates or loops over that no parameter count reveals: the side a centre net's
# window is resized to, the input fill's solver iterations (its defaults stop at 600) and the
# caption length. Each limit is well above what any preset uses.
INFERENCE_LIMITS = {
    "data.image_px": 4096,
    "model.fill_iterations": 10_000,
    "data.caption_tokens": 1024,
}


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _refusal(file: Path, message: str) -> UserError:
    """UserError "FILE: message" as one line of at most MAX_ERROR_CHARS characters."""
    line = " ".join(f"{file}: {message}".split())
    if len(line) > MAX_ERROR_CHARS:
        line = line[: MAX_ERROR_CHARS - 3] + "..."
    return UserError(line)


def _read(file: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(ganpaint metadata, tensors) of an export file."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            text = (handle.metadata() or {}).get("ganpaint")
        state = load_file(str(file))
    except Exception as error:
        raise _refusal(file, f"unreadable safetensors file ({_first_line(error)})") from None
    if text is None:
        raise _refusal(file, "not a ganpaint export (no 'ganpaint' metadata)")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise _refusal(file, "its 'ganpaint' metadata is not a JSON object")
    return meta, state


def _check_finite(state: dict[str, torch.Tensor], file: Path) -> None:
    """Refuse weights holding NaN or infinity: the net would paint them into every hole."""
    broken = _non_finite(state)
    if broken:
        raise _refusal(
            file,
            f"{len(broken)} of {len(state)} tensors hold NaN or infinite values (first: "
            f"{broken[0][:60]}): export a checkpoint from before the training diverged",
        )


def _metadata_config(meta: dict, file: Path) -> TrainConfig:
    if not isinstance(meta.get("config"), dict):
        raise _refusal(file, "no training config in its metadata")
    try:
        config = config_lib.from_dict(meta["config"])
        config_lib.validate(config)
    except ConfigError as error:
        raise _refusal(file, f"metadata {error}") from None
    except (OmegaConfBaseException, ValueError, TypeError) as error:  # unknown key, wrong type
        raise _refusal(file, f"metadata config: {_first_line(error)}") from None
    return config


def _metadata_sizes(config: TrainConfig, file: Path) -> None:
    """Refuse sizes above INFERENCE_LIMITS before anything is built or allocated."""
    for key, limit in INFERENCE_LIMITS.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name, None)
        if isinstance(value, int) and value > limit:
            raise _refusal(
                file, f"metadata {key}={value} is above {limit:,}: no ganpaint model uses that"
            )


def _metadata_mean(meta: dict, file: Path) -> tuple[float, float, float]:
    mean_rgb = meta.get("mean_rgb")
    valid = (
        isinstance(mean_rgb, list)
        and len(mean_rgb) == 3
        and all(isinstance(value, (int, float)) and 0 <= value <= 1 for value in mean_rgb)
    )
    if not valid:
        raise _refusal(
            file, "metadata 'mean_rgb' (the hole fill colour) must be three numbers in [0, 1]"
        )
    return tuple(float(value) for value in mean_rgb)


def _metadata_choice(
    meta: dict, key: str, default: str, allowed: tuple[str, ...], file: Path
) -> str:
    value = meta.get(key, default)
    if value not in allowed:
        raise _refusal(file, f"metadata {key!r} must be one of {', '.join(allowed)}")
    return value


def _described_nets(config: TrainConfig, file: Path) -> Nets:
    """The nets the metadata describes, built on the meta device: shapes, no storage. UserError
    when they cannot be built or one is larger than MAX_PARAMETERS."""
    family = config.model.family
    try:
        with torch.device("meta"):
            nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    except Exception as error:  # a size that overflows, or a rule of a net's constructor
        raise _refusal(
            file, f"metadata describes a {family} net that cannot be built ({_first_line(error)})"
        ) from None
    for role, module in (("generator", nets.generator), ("discriminator", nets.discriminator)):
        count = sum(tensor.numel() for tensor in module.state_dict().values())
        if count > MAX_PARAMETERS:
            raise _refusal(
                file,
                f"metadata describes a {family} {role} of {count:,} parameters, above the "
                f"{MAX_PARAMETERS:,} any export may hold (model.width={config.model.width})",
            )
    return nets


def _weights_mismatch(expected: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> str:
    """How the stored tensors differ from the described net's ('' when they fit exactly)."""
    described = sum(tensor.numel() for tensor in expected.values())
    held = sum(tensor.numel() for tensor in stored.values())
    if described != held:
        return f"the net has {described:,} numbers, the file {held:,}"
    missing = [name for name in expected if name not in stored]
    extra = [name for name in stored if name not in expected]
    if missing or extra:
        first = (missing or extra)[0][:80]
        return f"{len(missing)} tensors missing, {len(extra)} unexpected (first: {first})"
    for name, tensor in expected.items():
        found = stored[name]
        if found.shape != tensor.shape or found.dtype != tensor.dtype:
            return (
                f"{name[:80]}: {found.dtype} {list(found.shape)} in the file, "
                f"{tensor.dtype} {list(tensor.shape)} in the net"
            )
    return ""


def _generator_from(config: TrainConfig, state: dict[str, torch.Tensor], file: Path) -> nn.Module:
    """The described generator holding the file's tensors. Only what the file holds is allocated:
    the nets are built on the meta device, checked against the file, then given its tensors."""
    generator = _described_nets(config, file).generator
    mismatch = _weights_mismatch(generator.state_dict(), state)
    if mismatch:
        raise _refusal(
            file,
            f"the weights do not fit the {config.model.family} net its metadata describes "
            f"(model.width={config.model.width}): {mismatch}",
        )
    generator.load_state_dict(state, assign=True)  # the file's tensors become the parameters
    return generator


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> Exported:
    """Rebuild the generator from a run dir, its export/ dir, or a generator .safetensors file.

    Refused in one line naming the file: non-finite weights, metadata out of range or not
    describing the weights (checked on the meta device, before anything is allocated)."""
    file = _resolve(path)
    meta, state = _read(file)
    _check_finite(state, file)
    net = _metadata_choice(meta, "net", "generator", ("generator", "discriminator"), file)
    if net != "generator":
        raise _refusal(
            file, f"this is a discriminator; inference needs the generator ({GENERATOR_FILE})"
        )
    config = _metadata_config(meta, file)
    family = registry.get(config.model.family)  # validated with the config: a known family
    _metadata_sizes(config, file)
    mean_rgb = _metadata_mean(meta, file)
    step = meta.get("step")
    if not isinstance(step, int) or step < 0:
        raise _refusal(file, "metadata 'step' must be a whole number >= 0")
    generator = _generator_from(config, state, file).to(device).eval()
    tokenizer = _metadata_tokenizer(meta, file) if "tokenizer" in meta else None
    return Exported(generator, family, config, mean_rgb, step, tokenizer)


def _metadata_tokenizer(meta: dict, file: Path) -> object:
    if not isinstance(meta["tokenizer"], str):
        raise _refusal(file, "metadata 'tokenizer' must be the tokenizer's JSON text")
    try:
        return tokenizer_from_json(meta["tokenizer"])
    except Exception as error:  # tokenizers raises its own exception type for bad JSON
        raise _refusal(
            file, f"metadata 'tokenizer' is not a tokenizer ({_first_line(error)})"
        ) from None
