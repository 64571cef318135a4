"""Reading a shard directory's manifest.json without trusting it: every value is checked before use.

A manifest is a file anyone can edit, so nothing in it may reach a shell, a URL opener or a path
outside its directory. Shard names must be of the form ganpaint writes (`train-000003.tar`: the
split, six or more digits, `.tar`), which keeps each one a plain file inside the shard directory;
the shards are then opened with `open()` (ganpaint/data/batches.py), never through webdataset's URL
handling, where a `pipe:` name would run a command. Anything else is refused in one line. A remote
shard directory (https://, s3://, gs://) follows the same rules: its checked names are joined
under the URL given and fetched through fsspec (ganpaint/data/remote.py).

Numbers are bounded before anything is sized by them: a split's count must be the sum of its
shards' counts, and a shard cannot list more samples than its recorded bytes (and its file on
disk) can hold, MIN_SAMPLE_BYTES each, so a count edited to 10**12 is refused instead of sizing a
reader's sample order. `parameters.size` (the packed shortest side) is only informational: it must
lie in 8..MAX_SIDE, and decoding takes each image's size from its own header (ganpaint/data/
decode.py). Every message is one line of at most MAX_MESSAGE_CHARS: a manifest's strings can be
megabytes long.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

from ganpaint.data import remote
from ganpaint.data.packing import MANIFEST, MAX_SIDE
from ganpaint.data.sources import SPLITS
from ganpaint.errors import UserError

SHARD_NAME = re.compile(r"(train|val|test)-\d{6,}\.tar")
IMAGE_KEYS = ("jpg", "png", "webp")  # the formats `ganpaint shards --format` writes
# A sample is two tar members (image, json), each a 512-byte header and at least one 512-byte
# block: 2048 bytes. Half of that is the bound, so no real shard is ever refused by it.
MIN_SAMPLE_BYTES = 1024
MIN_SIZE_PX = 8  # `ganpaint shards --size` range
MAX_MESSAGE_CHARS = 400
MAX_VALUE_CHARS = 60  # a quoted manifest value


class ManifestError(UserError):
    """A manifest.json that ganpaint did not write (or that was edited); one line, capped."""

    def __init__(self, message: str):
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message.replace("\n", " "))


def _shown(value: object) -> str:
    """A manifest value quoted for a message, cut to MAX_VALUE_CHARS."""
    shown = repr(value)
    return shown if len(shown) <= MAX_VALUE_CHARS else shown[:MAX_VALUE_CHARS] + "..."


def _require(condition: bool, path: Path, what: str) -> None:
    if not condition:
        raise ManifestError(f"{path}: not a ganpaint shard manifest ({what})")


def _disagree(path: Path, key: str, what: str) -> None:
    raise ManifestError(f"{path}: {key!r} {what}; re-pack the shards (ganpaint shards)")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_shard(path: Path, split: str, number: int, shard: object) -> None:
    key = f"splits.{split}.shards[{number}]"
    _require(isinstance(shard, dict), path, f"{key!r} is not an object")
    name = shard.get("name")
    if not (isinstance(name, str) and SHARD_NAME.fullmatch(name) and name.startswith(split)):
        raise ManifestError(
            f"{path}: refused shard name {_shown(name)} in split {split!r}: ganpaint reads only "
            f"its own shard files ({split}-NNNNNN.tar) inside the shard directory"
        )
    count, size = shard.get("count"), shard.get("bytes")
    _require(_is_count(count), path, f"'{key}.count' is not an image count")
    if size is None:
        return  # packs record it; without it the file's own size bounds the count (split_shards)
    _require(_is_count(size), path, f"'{key}.bytes' is not a byte count")
    if count * MIN_SAMPLE_BYTES > size:
        _disagree(
            path,
            f"{key}.count",
            f"is {_shown(count)}, more samples than its {_shown(size)} bytes can hold "
            f"({size // MIN_SAMPLE_BYTES} at {MIN_SAMPLE_BYTES} bytes or more each)",
        )


def _check_split(path: Path, split: str, entry) -> None:
    _require(isinstance(entry, dict), path, f"split {split!r} is not an object")
    shards = entry.get("shards")
    _require(isinstance(shards, list), path, f"split {split!r} has no shard list")
    _require(_is_count(entry.get("count")), path, f"split {split!r} has no image count")
    for number, shard in enumerate(shards):
        _check_shard(path, split, number, shard)
    total = sum(shard["count"] for shard in shards)
    if entry["count"] != total:
        _disagree(
            path,
            f"splits.{split}.count",
            f"is {_shown(entry['count'])}, but its shards list {_shown(total)}",
        )
    sizes = [shard.get("bytes") for shard in shards]
    if "bytes" in entry and None not in sizes and entry["bytes"] != sum(sizes):
        _disagree(
            path,
            f"splits.{split}.bytes",
            f"is {_shown(entry['bytes'])}, but its shards hold {sum(sizes)}",
        )


def _check(path: Path, manifest) -> None:
    _require(isinstance(manifest, dict), path, "not a JSON object")
    splits = manifest.get("splits")
    _require(isinstance(splits, dict), path, "no 'splits'")
    for split, entry in splits.items():
        _require(split in SPLITS, path, f"unknown split {_shown(split)}; ganpaint writes {SPLITS}")
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
    _require(
        _is_count(size) and MIN_SIZE_PX <= size <= MAX_SIDE,
        path,
        f"'parameters.size' {_shown(size)} is not a size in {MIN_SIZE_PX}..{MAX_SIDE} px",
    )
    _require(
        manifest.get("image_key") in IMAGE_KEYS, path, f"'image_key' is not one of {IMAGE_KEYS}"
    )


def read_manifest(shard_dir: str | Path) -> dict:
    """The shard directory's manifest.json, checked. UserError (one line) if missing or not one
    ganpaint wrote."""
    remote_dir = remote.is_remote(shard_dir)  # https://, s3://, gs:// (ganpaint/data/remote.py)
    path = remote.display(shard_dir, MANIFEST) if remote_dir else Path(shard_dir) / MANIFEST
    try:
        if remote_dir:
            text = remote.read_text(shard_dir, MANIFEST)  # None when absent; retried
        else:
            text = path.read_text() if path.is_file() else None
        manifest = None if text is None else json.loads(text)
    except (OSError, ValueError, RecursionError) as error:  # RecursionError: [[[[... nesting
        raise ManifestError(
            f"{path}: not a ganpaint shard manifest ({type(error).__name__}: {error})"
        ) from None
    if text is None:
        raise UserError(
            f"{path}: not found; pack shards first: ganpaint shards --output "
            f"{remote.mask(shard_dir)} ..."
        )
    _check(path, manifest)
    return manifest


def check_split(manifest: dict, shard_dir: str | Path, split: str) -> None:
    """UserError (one line) if the manifest has no split `split`."""
    if split not in manifest["splits"]:
        raise UserError(
            f"{remote.display(shard_dir, MANIFEST)}: no split {split!r} "
            f"(has {', '.join(manifest['splits'])})"
        )


def split_shards(manifest: dict, shard_dir: str | Path, split: str) -> list[tuple[str, int]]:
    """(absolute path, sample count) of the split's non-empty shards, in manifest order; UserError
    if one is missing or is not a plain file.

    A count is at most what the file on disk can hold (MIN_SAMPLE_BYTES a sample): a shard cut
    short after packing is read as far as it goes (its missing samples are skipped and counted),
    and a count edited along with its recorded bytes cannot size a reader's plan beyond the file.
    """
    check_split(manifest, shard_dir, split)
    if remote.is_remote(shard_dir):  # fetched and checked against their sha256 when read
        return remote.remote_shards(shard_dir, manifest["splits"][split]["shards"])
    directory = Path(shard_dir).absolute()
    shards = []
    for shard in manifest["splits"][split]["shards"]:
        path = directory / shard["name"]  # a checked name: no separator, no scheme, no `..`
        if not path.is_file():
            raise UserError(f"{path}: listed in {MANIFEST} but missing (or not a file)")
        count, fits = shard["count"], path.stat().st_size // MIN_SAMPLE_BYTES
        if count > fits:
            warnings.warn(
                f"{path}: {MANIFEST} lists {count} samples, but its {path.stat().st_size} bytes "
                f"hold at most {fits}; reading it as {fits}",
                stacklevel=2,
            )
            count = fits
        if count:
            shards.append((str(path), count))
    return shards
