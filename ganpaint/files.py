"""Files: writing them so that a crash never leaves half of one (every writer in ganpaint goes
through here), a full disk reported as one line naming the path and the space left, and their
checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ganpaint.errors import NO_SPACE_ERRNOS, OutOfSpace, format_bytes, free_bytes, free_space

# How libraries that write without Python's OSError say that the disk is full: safetensors (Rust's
# io::Error, "No space left on device (os error 28)"), or a message quoting strerror.
NO_SPACE_WORDS = ("No space left on device", "Disk quota exceeded", "os error 28", "StorageFull")
# torch.save's stream writer drops errno ("unexpected pos 576 vs 534", "file write failed"): it
# is a full disk when the file system it wrote to has (nearly) nothing left.
STREAM_WRITER_WORDS = ("PytorchStreamWriter", "unexpected pos", "file write failed")
NEARLY_FULL_BYTES = 1 << 20


def is_out_of_space(error: BaseException, path: str | Path) -> bool:
    """Whether `error`, raised by a write under `path`, means that its file system is full."""
    if isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS:
        return True
    text = str(error)
    if any(words in text for words in NO_SPACE_WORDS):
        return True
    if any(words in text for words in STREAM_WRITER_WORDS):
        try:
            return free_bytes(path) < NEARLY_FULL_BYTES
        except OSError:
            return False
    return False


def no_space(path: str | Path, needed: int | None = None) -> OutOfSpace:
    """The one line for a write under `path` that does not fit (`needed`: its size, if known)."""
    wanted = f", {format_bytes(needed)} needed" if needed is not None else ""
    return OutOfSpace(f"{path}: no space left on device ({free_space(path)}{wanted})")


def check_space(path: str | Path, needed: int) -> None:
    """OutOfSpace before writing `needed` bytes under `path` where they cannot fit."""
    if free_bytes(path) < needed:
        raise no_space(path, needed)


@contextmanager
def reporting_full_disk(path: str | Path) -> Iterator[None]:
    """Inside the block, a failed write that is really a full disk (whatever library wrote it)
    becomes OutOfSpace naming `path` and the space left; other errors pass unchanged."""
    try:
        yield
    except OutOfSpace:
        raise
    except Exception as error:
        if is_out_of_space(error, path):
            raise no_space(path) from None
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; write it inside the block. On success it replaces
    `path` in one rename, so a reader sees the old file or the new one; on error it is removed
    (a full disk is reported as OutOfSpace naming `path`)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with reporting_full_disk(path):
            yield temporary
            os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def install_directory(staging: Path, final: Path) -> None:
    """Rename the complete directory `staging` to `final`, so that a reader sees the old one or
    the new one, whole: an existing `final` is moved aside first and deleted after."""
    replaced = final.with_name(f"{final.name}.replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    if final.exists():
        final.rename(replaced)
    staging.rename(final)
    shutil.rmtree(replaced, ignore_errors=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
