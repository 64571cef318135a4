"""Training checkpoints: saved by every rank, renamed into place atomically, the newest K kept.

Layout: RUN/checkpoints/step-00001000/{generator,discriminator}.safetensors, optimizers.pt (optimiser
and loss-scaler state: tensors and plain values only, read back with weights_only=True) and
state.json (step, resolved config, health counters). A crash mid-save leaves a `.tmp` directory
that is ignored and removed by the next save, so the last good checkpoint is never touched.
The nets and optimisers are written by the training backend (ganpaint/train/backend.py): DDP as
above, DeepSpeed as the engines' own files in step-N/{generator,discriminator}/. state.json records
which backend wrote them and the facts a resume must match ("backend": name, processes, ...).

No RNG state is stored because none is needed: data order, holes and latents are drawn from
generators seeded by (seed, rank, step), so a resumed run draws exactly what it would have.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ganpaint import config as config_lib
from ganpaint.config import TrainConfig
from ganpaint.errors import UserError
from ganpaint.train.backend import TrainState

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


def save(
    state: TrainState,
    run_dir: str | Path,
    step: int,
    config: TrainConfig,
    keep: int,
    extra: dict | None = None,
) -> Path:
    """Write checkpoint `step` (call on every rank: the backend decides who writes what)."""
    accelerator = state.accelerator
    root = checkpoint_root(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{final.name}.tmp"
    accelerator.wait_for_everyone()
    if not final.exists():
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()  # the directory exists before any rank writes into it
        facts = state.backend.save(state, tmp)
        skipped = state.health.read().skipped
        if accelerator.is_main_process:
            record = {
                "step": step,
                "config": config_lib.to_dict(config),
                "health": {"skipped": skipped},
                "backend": {"name": state.backend.name, "label": state.backend.label, **facts},
                **(extra or {}),
            }
            (tmp / "state.json").write_text(json.dumps(record, indent=1))
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


def backend_record(saved: dict) -> dict:
    """Which backend wrote a checkpoint, and its facts (older checkpoints kept DeepSpeed's facts
    under "deepspeed" and wrote nothing for DDP)."""
    if "backend" in saved:
        return saved["backend"]
    if "deepspeed" in saved:
        return {"name": "deepspeed", "label": "DeepSpeed", **saved["deepspeed"]}
    return {"name": "ddp", "label": "DDP"}


def load(state: TrainState, path: Path) -> dict:
    """Restore nets, optimisers and scaler from checkpoint `path`; returns its state.json.

    Call on every rank (a collective under DeepSpeed).
    """
    saved = read_state(path)
    facts = dict(backend_record(saved))
    written, label = facts.pop("name"), facts.pop("label", "")
    if written != state.backend.name:
        raise UserError(
            f"{path} was written by a {label or written} run and cannot be resumed with "
            f"{state.backend.label}: launch it as it was started, or use a new run.dir"
        )
    state.backend.load(state, path, facts)
    state.health.skipped_before = int(saved.get("health", {}).get("skipped", 0))
    return saved


def check_compatible(saved: dict, current: TrainConfig, path: Path) -> None:
    """Refuse to resume into nets of another shape (one line naming the keys)."""
    differences = config_lib.shaping_differences(config_lib.from_dict(saved["config"]), current)
    if differences:
        raise UserError(
            f"{path} was trained with other model-shaping settings ({'; '.join(differences)}): "
            "use a new run.dir, or the original values"
        )
