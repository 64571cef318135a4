"""Reading a shard directory's manifest.json without trusting it: every value is checked before use.

A manifest is a file anyone can edit, so nothing in it may reach a shell, a URL opener or a path
outside its directory. Shard names must be of the form ganpaint writes (`train-000003.tar`: the
split, six or more digits, `.tar`), which keeps each one a plain file inside the shard directory;
the shards are then opened with `open()` (ganpaint/data/batches.py), never through webdataset's URL
handling, where a `pipe:` name would run a command. Anything else is refused in one line.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ganpaint.data.packing import MANIFEST
from ganpaint.data.sources import SPLITS
from ganpaint.errors import UserError

SHARD_NAME = re.compile(r"(train|val|test)-\d{6,}\.tar")
IMAGE_KEYS = ("jpg", "png", "webp")  # the formats `ganpaint shards --format` writes


class ManifestError(UserError):
    """A manifest.json that ganpaint did not write (or that was edited)."""


def _require(condition: bool, path: Path, what: str) -> None:
    if not condition:
        raise ManifestError(f"{path}: not a ganpaint shard manifest ({what})")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_split(path: Path, split: str, entry) -> None:
    _require(isinstance(entry, dict), path, f"split {split!r} is not an object")
    shards = entry.get("shards")
    _require(isinstance(shards, list), path, f"split {split!r} has no shard list")
    _require(_is_count(entry.get("count")), path, f"split {split!r} has no image count")
    for shard in shards:
        _require(isinstance(shard, dict), path, f"a shard of split {split!r} is not an object")
        name = shard.get("name")
        if not (isinstance(name, str) and SHARD_NAME.fullmatch(name) and name.startswith(split)):
            raise ManifestError(
                f"{path}: refused shard name {name!r} in split {split!r}: ganpaint reads only "
                f"its own shard files ({split}-NNNNNN.tar) inside the shard directory"
            )
        _require(_is_count(shard.get("count")), path, f"shard {name} has no image count")


def _check(path: Path, manifest) -> None:
    _require(isinstance(manifest, dict), path, "not a JSON object")
    splits = manifest.get("splits")
    _require(isinstance(splits, dict), path, "no 'splits'")
    for split, entry in splits.items():
        _require(split in SPLITS, path, f"unknown split {split!r}; ganpaint writes {SPLITS}")
        _check_split(path, split, entry)
    mean_rgb = manifest.get("mean_rgb")
    _require(
        isinstance(mean_rgb, list)
        and len(mean_rgb) == 3
        and all(isinstance(value, (int, float)) and math.isfinite(value) for value in mean_rgb)
        and all(0 <= value <= 1 for value in mean_rgb),
        path,
        "'mean_rgb' is not three values in [0, 1]",
    )
    parameters = manifest.get("parameters")
    size = parameters.get("size") if isinstance(parameters, dict) else None
    _require(_is_count(size) and size > 0, path, "'parameters.size' is not a positive integer")
    _require(
        manifest.get("image_key") in IMAGE_KEYS, path, f"'image_key' is not one of {IMAGE_KEYS}"
    )


def read_manifest(shard_dir: str | Path) -> dict:
    """The shard directory's manifest.json, checked. UserError (one line) if missing or not one
    ganpaint wrote."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{path}: not found; pack shards first: ganpaint shards --output {shard_dir} ..."
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ManifestError(
            f"{path}: not a ganpaint shard manifest ({type(error).__name__}: {error})"
        ) from None
    _check(path, manifest)
    return manifest


def check_split(manifest: dict, shard_dir: str | Path, split: str) -> None:
    """UserError (one line) if the manifest has no split `split`."""
    if split not in manifest["splits"]:
        raise UserError(
            f"{Path(shard_dir) / MANIFEST}: no split {split!r} "
            f"(has {', '.join(manifest['splits'])})"
        )


def split_shards(manifest: dict, shard_dir: str | Path, split: str) -> list[tuple[str, int]]:
    """(absolute path, sample count) of the split's non-empty shards, in manifest order; UserError
    if one is missing or is not a plain file."""
    check_split(manifest, shard_dir, split)
    directory = Path(shard_dir).absolute()
    shards = []
    for shard in manifest["splits"][split]["shards"]:
        path = directory / shard["name"]  # a checked name: no separator, no scheme, no `..`
        if not path.is_file():
            raise UserError(f"{path}: listed in {MANIFEST} but missing (or not a file)")
        if shard["count"]:
            shards.append((str(path), shard["count"]))
    return shards
