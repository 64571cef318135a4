"""A shard directory's pack state: refusing a directory that is not ours, and finding the shards an
earlier run of the same pack finished (recorded in its manifest, or in .packing/ if it stopped
early), so that re-running a command resumes it. Everything read here may be damaged or edited:
what does not parse is not ours to resume, and names from it are quoted cut short.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ganpaint.data.packing import MANIFEST, STATE_DIR, ShardTask, file_sha256, write_json
from ganpaint.data.sources import printable
from ganpaint.errors import UserError

SHARD_NAME = re.compile(r"^(train|val|test)-\d{6}\.tar$")
UNREADABLE = (ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError)


def _recorded_state(output: Path) -> tuple[dict | None, dict[str, dict]]:
    """(source + parameters, per-shard records) of an earlier pack in `output`, read from its
    manifest and from the records of an unfinished run; (None, {}) where there is none."""
    described, records = None, {}
    manifest_path = output / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            described = {"source": manifest["source"], **manifest["parameters"]}
            for split, entry in manifest["splits"].items():
                for shard in entry["shards"]:
                    skipped = [s for s in manifest["skipped"] if s.get("shard") == shard["name"]]
                    records[shard["name"]] = {**shard, "split": split, "skipped": skipped}
        except UNREADABLE:
            described, records = None, {}  # not ours to resume: refused as "other files"
    state = output / STATE_DIR
    if (state / "parameters.json").is_file():
        try:
            described = json.loads((state / "parameters.json").read_text())
        except UNREADABLE:
            return None, {}
        if not isinstance(described, dict):
            return None, {}
        for path in sorted(state.glob("*.tar.json")):
            try:
                record = json.loads(path.read_text())
                records[record["name"]] = record
            except UNREADABLE:
                continue  # a damaged record: its shard is packed again
    return described, records


def claim_output(output: Path, described: dict, overwrite: bool) -> dict[str, dict]:
    """Make `output` ours for this pack; return the records of an earlier pack with the same
    parameters (candidates for reuse).

    A directory holding other files, or shards packed with other parameters, is refused unless
    `overwrite`, which deletes the earlier pack's files (never files it did not write).
    """
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output}: exists and is not a directory")
    output.mkdir(parents=True, exist_ok=True)
    previous, records = _recorded_state(output)
    conflict = ""
    if previous is None:
        others = sorted(path.name for path in output.iterdir())
        if others:
            conflict = f"holds other files ({printable(', '.join(others[:3]), 200)})"
    elif previous != described:
        changed = sorted(
            str(key)
            for key in previous.keys() | described.keys()
            if previous.get(key) != described.get(key)
        )
        conflict = (
            f"holds shards packed with other parameters ({printable(', '.join(changed), 200)})"
        )
    if conflict and not overwrite:
        raise UserError(f"--output {output} {conflict}; pass --overwrite to replace it")
    if conflict:
        remove_stale_shards(output, keep=())
        (output / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(output / STATE_DIR, ignore_errors=True)
        records = {}
    (output / STATE_DIR).mkdir(exist_ok=True)
    write_json(output / STATE_DIR / "parameters.json", described)
    return records


def remove_stale_shards(output: Path, keep: tuple[str, ...]) -> None:
    """Delete shard tars this pack does not list (a larger earlier pack's, or all of them)."""
    for path in output.iterdir():
        if SHARD_NAME.match(path.name) and path.name not in keep:
            path.unlink()


def verified(output: Path, task: ShardTask, record: dict | None) -> bool:
    """Whether the recorded shard can be kept: same plan, and its file still has the sha256."""
    path = output / task.name
    return (
        record is not None
        and record.get("plan") == task.plan
        and path.is_file()
        and file_sha256(path) == record.get("sha256")
    )
