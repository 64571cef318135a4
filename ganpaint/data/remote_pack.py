"""Packing into an object store (`ganpaint shards --output s3://bucket/prefix`, or gs://): the
ordinary packer (ganpaint/data/shards.py) writes the shards into a local staging directory, each
shard is uploaded as soon as it is sealed, and manifest.json goes up last.

A reader therefore never sees a manifest naming a missing shard: an earlier pack's manifest is
deleted before the first shard that changes is uploaded, and the new one is uploaded after every
shard. An interrupted pack resumes: the staging directory (in the system's temporary directory,
named after the URL, removed once the manifest is up) keeps the sealed shards and the record of
those uploaded, the packer reuses every shard that still verifies, and a shard the prefix already
holds with the same sha256 is not uploaded again. A re-run after the staging directory is gone
reads the prefix's manifest: other parameters are refused unless --overwrite, as on disk. A prefix
holding files ganpaint does not write is refused unless --overwrite, and those files are never
deleted. Every request is retried within data.remote_timeout_s (ganpaint/data/remote.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from ganpaint.data.captions import TOKENIZER_FILE
from ganpaint.data.packing import MANIFEST, STATE_DIR, write_json
from ganpaint.data.remote import (
    REQUEST_TIMEOUT_S,
    Budget,
    Location,
    call,
    current_settings,
    parse,
    read_bytes,
)
from ganpaint.errors import UserError

STAGING_PREFIX = "ganpaint-pack-"
UPLOADED = "uploaded.json"  # beside the staged shards: {shard name: sha256} the prefix holds
SHARD = re.compile(r"(train|val|test)-\d{6,}\.tar")
OURS = re.compile(rf"{SHARD.pattern}|{re.escape(MANIFEST)}|{re.escape(TOKENIZER_FILE)}")


class Prefix:
    """A remote shard directory being written: list, read, upload and delete, each retried."""

    def __init__(self, location: Location):
        self.location, self.settings = location, current_settings()

    def _retried(self, name: str, method: str, *args, longest: float = REQUEST_TIMEOUT_S):
        """`method`(*args, URL of `name`) retried; None where the file is not there."""
        url, shown = self.location.child(name) if name else (self.location.url, self.location.shown)
        budget = Budget(shown, self.settings.timeout_s)
        while True:
            try:
                timeout = budget.request_timeout(longest)
                return call(self.location.scheme, method, *args, url, timeout=timeout)
            except FileNotFoundError:
                return None  # an empty prefix, a file already gone
            except Exception as error:  # classified: permanent ones raise, the rest are retried
                budget.failed(error)

    def names(self) -> set[str]:
        listed = self._retried("", "_ls", longest=REQUEST_TIMEOUT_S) or []
        return {entry.rstrip("/").rsplit("/", 1)[-1] for entry in listed}

    def read(self, name: str) -> bytes | None:
        url, shown = self.location.child(name)
        return read_bytes(self.location.scheme, url, shown, self.settings)

    def upload(self, local: Path, name: str) -> None:
        # one try may take a third of data.remote_timeout_s: a large shard on a slow uplink
        self._retried(name, "_put_file", str(local), longest=self.settings.timeout_s)

    def delete(self, name: str) -> None:
        self._retried(name, "_rm_file")


class Uploader:
    """The packer's `sealed` hook: uploads each sealed shard the prefix does not hold yet,
    deleting the prefix's old manifest before the first."""

    def __init__(self, prefix: Prefix, staged: Path, record: Path):
        self.prefix, self.staged, self.record = prefix, staged, record
        self.uploaded: dict[str, str] = {}
        if record.is_file():
            self.uploaded = json.loads(record.read_text())
        self.manifest_deleted = False

    def __call__(self, shard: dict) -> None:
        name, sha256 = shard["name"], shard["sha256"]
        if self.uploaded.get(name) == sha256:
            return
        if not self.manifest_deleted:  # it may name this shard with its old bytes
            self.prefix.delete(MANIFEST)
            self.manifest_deleted = True
        self.uploaded.pop(name, None)
        write_json(self.record, self.uploaded)  # forgotten before its object changes
        self.prefix.upload(self.staged / name, name)
        self.uploaded[name] = sha256
        write_json(self.record, self.uploaded)


def staging_root(location: Location) -> Path:
    """Where a pack to `location` is staged: the same folder for every run of it, so a run
    resumes the one before (the masked URL names it: credentials do not change the place)."""
    key = hashlib.sha256(location.shown.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"{STAGING_PREFIX}{key}"


def _prepare(prefix: Prefix, root: Path, overwrite: bool) -> None:
    """Refuse a prefix holding other files; with no staging left from an earlier run, seed it
    from the prefix's manifest (its parameters are then checked, and its shards count as
    uploaded)."""
    others = sorted(name for name in prefix.names() if not OURS.fullmatch(name))
    if others and not overwrite:
        raise UserError(
            f"--output {prefix.location.shown} holds other files ({', '.join(others[:3])}); "
            "pass --overwrite to pack beside them"
        )
    staged = root / "shards"
    if (staged / MANIFEST).exists() or (staged / STATE_DIR).exists():
        return
    text = prefix.read(MANIFEST)
    if text is None:
        return
    staged.mkdir(parents=True, exist_ok=True)
    (staged / MANIFEST).write_bytes(text)
    try:
        shards = [
            shard for entry in json.loads(text)["splits"].values() for shard in entry["shards"]
        ]
        uploaded = {shard["name"]: shard["sha256"] for shard in shards}
    except (ValueError, KeyError, TypeError, AttributeError):
        uploaded = {}  # not one ganpaint wrote: the packer refuses it below
    write_json(root / UPLOADED, uploaded)


def pack_remote(source: str, output: str, overwrite: bool = False, **arguments) -> dict:
    """`pack` (ganpaint/data/shards.py) into a remote prefix; returns the manifest."""
    from ganpaint.data.shards import pack

    location = parse(output)
    if location.scheme not in ("s3", "gs"):
        raise UserError(
            f"--output {location.shown}: {location.scheme}:// is read-only; pack to a local "
            "directory, s3://bucket/prefix or gs://bucket/prefix"
        )
    prefix, root = Prefix(location), staging_root(location)
    _prepare(prefix, root, overwrite)
    staged = root / "shards"
    uploader = Uploader(prefix, staged, root / UPLOADED)
    try:
        manifest = pack(source, staged, overwrite=overwrite, sealed=uploader, **arguments)
    except UserError as error:  # name the URL, not the staging directory
        raise UserError(str(error).replace(str(staged), location.shown)) from None
    if (staged / TOKENIZER_FILE).is_file():
        prefix.upload(staged / TOKENIZER_FILE, TOKENIZER_FILE)
    prefix.upload(staged / MANIFEST, MANIFEST)  # last: every shard it names is there
    listed = {shard["name"] for entry in manifest["splits"].values() for shard in entry["shards"]}
    for name in prefix.names():
        if SHARD.fullmatch(name) and name not in listed:
            prefix.delete(name)  # an earlier, larger pack's: no manifest names it now
    shutil.rmtree(root, ignore_errors=True)
    return manifest
