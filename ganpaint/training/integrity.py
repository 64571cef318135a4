"""A checkpoint's integrity record: the size and sha256 of every file in it, written last.

`complete.json` = {"format": 1, "files": {"state.json": {"bytes": N, "sha256": HEX}, ...}}, paths
relative to the checkpoint directory with "/" separators (DeepSpeed writes subdirectories). It is
written after every other file, state.json included, so a checkpoint is complete exactly when its
record is present and every file it lists has that size and digest: a crash, a full disk or a
hand edit anywhere shows up as a mismatch, whatever the backend wrote.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

from ganpaint.errors import UserError
from ganpaint.files import file_sha256, write_text_atomically

RECORD = "complete.json"
FORMAT = 1
# What the record may name: a relative path of plain names (no "..", no root, no drive).
RELATIVE_PATH = re.compile(r"[\w.+-]+(/[\w.+-]+)*")


class CheckpointDamaged(UserError):
    """A checkpoint that cannot be used as it is: incomplete, altered or unreadable."""


def describe(error: BaseException) -> str:
    """A load error as one short line. Pickle's advice (to load without weights_only) is dropped:
    that would run code from the file."""
    if isinstance(error, pickle.UnpicklingError):
        return "not a file of tensors (refused by the weights_only loader)"
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def write_record(directory: Path) -> None:
    """Record every file under `directory` (call once all of them are written)."""
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != RECORD:
            name = path.relative_to(directory).as_posix()
            files[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    write_text_atomically(directory / RECORD, json.dumps({"format": FORMAT, "files": files}))


def has_record(directory: Path) -> bool:
    return (directory / RECORD).is_file()


def _listed_files(directory: Path) -> dict[str, dict]:
    try:
        record = json.loads((directory / RECORD).read_text())
        files = record["files"]
        valid = record["format"] == FORMAT and isinstance(files, dict) and files
    except (OSError, ValueError, KeyError, TypeError):
        valid = False
    if not valid:
        raise CheckpointDamaged(f"{RECORD} is unreadable")
    for name, entry in files.items():
        if not (
            RELATIVE_PATH.fullmatch(name)
            and ".." not in name.split("/")
            and isinstance(entry, dict)
            and isinstance(entry.get("bytes"), int)
            and isinstance(entry.get("sha256"), str)
        ):
            raise CheckpointDamaged(f"{RECORD} lists an invalid entry {name!r}")
    if "state.json" not in files:
        raise CheckpointDamaged(f"{RECORD} does not list state.json")
    return files


def verify(directory: Path) -> None:
    """CheckpointDamaged naming the first file that is missing or differs from the record."""
    for name, entry in _listed_files(directory).items():
        path = directory / name
        if not path.is_file():
            raise CheckpointDamaged(f"{name} is missing")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointDamaged(f"{name} has {size} bytes, its record says {entry['bytes']}")
        if file_sha256(path) != entry["sha256"]:
            raise CheckpointDamaged(f"{name} does not match its recorded sha256")
