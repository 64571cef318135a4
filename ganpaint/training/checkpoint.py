"""Training checkpoints: written by every rank, sealed by an integrity record, renamed into place
atomically, the newest K kept; resume takes the newest usable one and never starts over silently.

Layout: RUN/checkpoints/step-00001000/{generator,discriminator}.safetensors, optimizers.pt (optimiser
and loss-scaler state: tensors and plain values only, read back with weights_only=True), state.json
(step, resolved config, health counters) and complete.json, the integrity record
(ganpaint/training/integrity.py) written last. The nets and optimisers are written by the training
backend (ganpaint/training/backend.py): DDP as above, DeepSpeed as the engines' own files in
step-N/{generator,discriminator}/. state.json records which backend wrote them and the facts a
resume must match ("backend": name, processes, ...).

Saving writes step-N.tmp and renames it to step-N (an existing step-N is moved aside first and
deleted after), so a crash mid-save never touches a complete checkpoint; leftovers are removed by
the next save. Before writing, a save checks that every weight and optimiser state tensor is
finite (a non-finite run is rolled back instead, ganpaint/training/rollback.py) and that the
checkpoint fits in the free space; a write that fails for lack of space anyway removes its
step-N.tmp and ends the run in one line naming the path and the space left. Resuming (every rank; rank 0 decides, the others load what it chose):
- the newest checkpoint whose record matches is loaded. One without a record, written by ganpaint
  before records existed, is accepted if it loads (on every rank).
- a checkpoint whose record is missing or does not match, or one without a record that fails to
  load, is damaged: it is renamed step-N.damaged-K (kept for inspection, never deleted), the next
  older one is tried, and one line says which was taken and why newer ones were passed over.
- one whose files match their record but do not load (another ganpaint version, other settings, a
  hostile file with a rewritten record) is refused in one line: it is intact, so older ones would
  not load either.
- if checkpoints (or damaged ones set aside earlier) exist but none is usable, the run is refused
  in one line: it never restarts from step 0 by itself.
- a checkpoint named with `--resume-from` is checked the same way; a damaged one is refused in one
  line and left in place.

No RNG state is stored because none is needed: data order, holes and latents are drawn from
generators seeded by (seed, rank, step), so a resumed run draws exactly what it would have.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ganpaint import config as config_lib
from ganpaint.config import ConfigError, TrainConfig
from ganpaint.errors import OutOfSpace, UserError, WeightsNotFinite
from ganpaint.files import free_bytes, install_directory, no_space, reporting_full_disk
from ganpaint.training import integrity
from ganpaint.training.backend import TrainState
from ganpaint.training.distributed import main_process_value, sum_over_ranks
from ganpaint.training.guard import finite_flags
from ganpaint.training.integrity import CheckpointDamaged, describe

PREFIX = "step-"
STEP_DIR = re.compile(r"step-(\d+)")
DAMAGED = ".damaged-"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_dirs(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Every step-N directory (sound or not), oldest first; not .tmp, .damaged-K or .replaced."""
    root = checkpoint_root(run_dir)
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        match = STEP_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def saved_steps(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Checkpoints that look complete (an integrity record, or an older one's state.json), oldest
    first. Resume checks them further."""
    return [
        (step, path)
        for step, path in _step_dirs(run_dir)
        if integrity.has_record(path) or (path / "state.json").is_file()
    ]


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
    """Write checkpoint `step`, replacing one of that step (call on every rank: the backend
    decides who writes what).

    Refused on every rank, before anything is written, when any weight or optimiser state is
    inf or NaN (WeightsNotFinite) or when the checkpoint cannot fit on the disk (OutOfSpace). A
    write that fails anyway (a disk filled meanwhile) removes step-N.tmp; the newest complete
    checkpoint is never touched."""
    accelerator = state.accelerator
    root = checkpoint_root(run_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f"{final.name}.tmp"
    check_finite(state, f"at step {step}")
    _check_space(state, run_dir, final)
    corrupt_samples = sum_over_ranks(accelerator, state.health.corrupt_samples)
    accelerator.wait_for_everyone()
    try:
        with reporting_full_disk(tmp):
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
                    "health": {"skipped": skipped, "corrupt_samples": corrupt_samples},
                    "backend": {"name": state.backend.name, "label": state.backend.label, **facts},
                    **(extra or {}),
                }
                (tmp / "state.json").write_text(json.dumps(record, indent=1))
                integrity.write_record(tmp)  # last: from here on the checkpoint is complete
    except OutOfSpace as error:
        _remove_partial(accelerator.is_main_process, tmp)
        raise OutOfSpace(f"{error}; {_kept(run_dir)}") from None
    except BaseException:
        _remove_partial(accelerator.is_main_process, tmp)
        raise
    if accelerator.is_main_process:
        install_directory(tmp, final)
        _prune(run_dir, keep)
    accelerator.wait_for_everyone()
    return final


def _remove_partial(is_main: bool, tmp: Path) -> None:
    if is_main:  # rank 0 made it; under DeepSpeed the others are past their writes or failed
        shutil.rmtree(tmp, ignore_errors=True)


def _kept(run_dir: str | Path) -> str:
    newest = latest(run_dir)
    return f"the newest checkpoint {newest.name} is kept" if newest else "no checkpoint saved yet"


def check_finite(state: TrainState, when: str) -> None:
    """WeightsNotFinite on every rank if any rank's weights or optimiser state hold inf or NaN.

    One fused check of every tensor on each rank, one collective and one host read: a save's
    cost, never a step's. All ranks take the same decision (under DeepSpeed each rank checks its
    own partitions)."""
    accelerator = state.accelerator
    groups = state.backend.held_tensors(state)
    bad = 1 - finite_flags(groups, accelerator.device)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    named = [name for name, count in zip(groups, bad.tolist(), strict=True) if count > 0]
    if named:
        raise WeightsNotFinite(f"the {' and the '.join(named)} hold inf or NaN {when}")


# state.json, complete.json and the file formats' headers, beyond the tensors' own bytes.
CHECKPOINT_SLACK_BYTES = 1 << 20


def _check_space(state: TrainState, run_dir: str | Path, final: Path) -> None:
    """OutOfSpace on every rank when the checkpoint's tensors cannot fit in the free space of
    the checkpoint directory's file system (rank 0 decides from every rank's share)."""
    accelerator = state.accelerator
    needed = sum_over_ranks(accelerator, state.backend.checkpoint_bytes(state))
    needed += CHECKPOINT_SLACK_BYTES
    short = 0
    if accelerator.is_main_process:
        final.parent.mkdir(parents=True, exist_ok=True)
        short = int(free_bytes(final.parent) < needed)
    if main_process_value(accelerator, short):
        if accelerator.is_main_process:
            raise OutOfSpace(f"{no_space(final, needed)}; {_kept(run_dir)}")
        raise OutOfSpace(f"{final}: no space left on device (rank 0 says how much)")


def _prune(run_dir: str | Path, keep: int) -> None:
    for _, path in saved_steps(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    root = checkpoint_root(run_dir)
    for stale in [*root.glob(f"{PREFIX}*.tmp"), *root.glob(f"{PREFIX}*.replaced")]:
        shutil.rmtree(stale, ignore_errors=True)


def _count(values: dict, key: str) -> int:
    value = values.get(key, 0 if key != "step" else None)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CheckpointDamaged(f"state.json: {key!r} is not a count")
    return value


def read_state(path: Path) -> dict:
    """state.json, its fields checked; CheckpointDamaged (one line) if unreadable or wrong."""
    try:
        saved = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as error:
        raise CheckpointDamaged(f"state.json is unreadable ({describe(error)})") from None
    if not (
        isinstance(saved, dict)
        and isinstance(saved.get("config"), dict)
        and isinstance(saved.get("health", {}), dict)
        and isinstance(backend_record(saved).get("name"), str)
    ):
        raise CheckpointDamaged("state.json is not a ganpaint checkpoint state")
    step = _count(saved, "step")
    match = STEP_DIR.fullmatch(path.name)
    if match and step != int(match.group(1)):
        raise CheckpointDamaged(f"state.json says step {step}")
    for key in ("skipped", "corrupt_samples"):
        _count(saved["health"] if "health" in saved else {}, key)
    return saved


def backend_record(saved: dict) -> dict:
    """Which backend wrote a checkpoint, and its facts (older checkpoints kept DeepSpeed's facts
    under "deepspeed" and wrote nothing for DDP)."""
    record = saved.get("backend")
    if isinstance(record, dict):
        return record
    if isinstance(saved.get("deepspeed"), dict):
        return {"name": "deepspeed", "label": "DeepSpeed", **saved["deepspeed"]}
    return {"name": "ddp", "label": "DDP"}


def load(state: TrainState, path: Path) -> dict:
    """Restore nets, optimisers and scaler from checkpoint `path`; returns its state.json.

    Call on every rank (a collective under DeepSpeed). CheckpointDamaged if any part fails to load;
    UserError if the checkpoint is sound but does not fit this run.
    """
    saved = read_state(path)
    facts = dict(backend_record(saved))
    written, label = facts.pop("name"), facts.pop("label", "")
    if written != state.backend.name:
        raise UserError(
            f"{path} was written by a {label or written} run and cannot be resumed with "
            f"{state.backend.label}: launch it as it was started, or use a new run.dir"
        )
    try:
        state.backend.load(state, path, facts)
    except UserError:
        raise  # damage already named, or a sound checkpoint that does not fit this run
    except Exception as error:  # whatever a torn or altered file makes a loader raise
        raise CheckpointDamaged(describe(error)) from None
    health = saved.get("health", {})
    state.health.skipped_before = health.get("skipped", 0)
    # The total over ranks is kept once, by rank 0, so that summing over ranks stays right.
    main = state.accelerator.is_main_process
    state.health.corrupt_samples = health.get("corrupt_samples", 0) if main else 0
    return saved


def check_compatible(saved: dict, current: TrainConfig, path: Path) -> None:
    """Refuse to resume into nets of another shape (one line naming the keys)."""
    try:
        saved_config = config_lib.from_dict(saved["config"])
    except ConfigError as error:
        raise UserError(
            f"{path}/state.json holds a config this ganpaint refuses: {error}"
        ) from None
    differences = config_lib.shaping_differences(saved_config, current)
    if differences:
        raise UserError(
            f"{path} was trained with other model-shaping settings ({'; '.join(differences)}): "
            "use a new run.dir, or the original values"
        )


def _set_aside(path: Path, reason: str) -> str:
    """Rename a damaged checkpoint to step-N.damaged-K; a description for the resume line."""
    number = 1
    while path.with_name(f"{path.name}{DAMAGED}{number}").exists():
        number += 1
    aside = path.with_name(f"{path.name}{DAMAGED}{number}")
    path.rename(aside)
    return f"{path.name} ({reason}; kept as {aside.name})"


def _newest_candidate(run_dir: Path, passed_over: list[str], notes: list[str]) -> int:
    """Rank 0: the newest checkpoint worth loading, setting aside any whose record fails; -1 if
    none is left."""
    for step, path in reversed(_step_dirs(run_dir)):
        try:
            if integrity.has_record(path):
                integrity.verify(path)
            elif (path / "state.json").is_file():
                notes.append(
                    f"note: {path.name} has no integrity record (saved by an older ganpaint): "
                    "checked by loading it"
                )
            else:
                raise CheckpointDamaged("no integrity record and no state.json: an unfinished save")
        except CheckpointDamaged as error:
            passed_over.append(_set_aside(path, str(error)))
            continue
        return step
    return -1


def resume(
    state: TrainState, config: TrainConfig, run_dir: str | Path, chosen: Path | None = None
) -> tuple[int, list[str]]:
    """Load the newest usable checkpoint of `run_dir` on every rank (module docstring), or the
    `chosen` one (`--resume-from`).

    Returns (step, lines for rank 0 to show); step 0 when the run has no checkpoint at all.
    """
    if chosen is not None:
        return _resume_chosen(state, config, Path(chosen)), []
    accelerator, run_dir = state.accelerator, Path(run_dir)
    passed_over, notes = [], []
    while True:
        step = -1
        if accelerator.is_main_process:
            step = _newest_candidate(run_dir, passed_over, notes)
        step = main_process_value(accelerator, step)
        if step < 0:
            break
        path = checkpoint_root(run_dir) / f"{PREFIX}{step:08d}"
        reason = ""
        try:
            check_compatible(read_state(path), config, path)
            load(state, path)
        except CheckpointDamaged as error:
            reason = str(error) or "damaged"
        if not sum_over_ranks(accelerator, int(bool(reason))):
            if passed_over:
                notes.append(
                    f"resuming from {path.name}, the newest usable checkpoint; passed over "
                    + "; ".join(passed_over)
                )
            return step, notes
        if integrity.has_record(path):  # intact files that do not load: not damage, a mismatch
            raise UserError(
                f"{path}: its files match their integrity record but do not load into this run "
                f"({reason or 'on another process'}): resume with the ganpaint version and "
                "settings that wrote it, or use a new run.dir"
            )
        if accelerator.is_main_process:
            passed_over.append(_set_aside(path, reason or "failed to load on another process"))
    damaged = sorted(checkpoint_root(run_dir).glob(f"{PREFIX}*{DAMAGED}*"))
    if damaged:
        found = "; ".join(passed_over) or ", ".join(path.name for path in damaged)
        raise UserError(
            f"{checkpoint_root(run_dir)}: no usable checkpoint ({found}): remove the damaged "
            "ones (or use a new run.dir) to start this run from step 0"
        )
    return 0, notes


def _resume_chosen(state: TrainState, config: TrainConfig, path: Path) -> int:
    """Load the checkpoint the user named, on every rank; one line refuses it if it is damaged
    (it is left where it is: the user chose it)."""
    accelerator = state.accelerator
    reason = ""
    if accelerator.is_main_process and integrity.has_record(path):
        try:
            integrity.verify(path)
        except CheckpointDamaged as error:
            reason = str(error) or "damaged"
    if not main_process_value(accelerator, int(bool(reason))):
        try:
            saved = read_state(path)
            check_compatible(saved, config, path)
            load(state, path)
        except CheckpointDamaged as error:
            reason = str(error) or "damaged"
    if sum_over_ranks(accelerator, int(bool(reason))):
        raise UserError(
            f"--resume-from {path}: the checkpoint is damaged ({reason or 'on another process'}): "
            "choose another one, or leave out --resume-from to take the newest usable one"
        )
    return int(saved["step"])
