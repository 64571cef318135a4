"""From tar shards to decoded batches: reading samples, the shuffle buffer, counting corrupt data,
and filling uint8 CHW RGB batches with crops.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from webdataset.tariterators import group_by_keys, tar_file_expander

from ganpaint.data.decode import crop_into, decode_bgr
from ganpaint.errors import UserError

MAX_ERRORS_IN_A_ROW = 1000  # corrupt samples or shards with no good one between: give up
WARNED_SKIPS = 10  # each reader warns of its first skips one by one, then of every REPEAT-th
REPEAT = 100


class ErrorCount:
    """Counts skipped samples and shards for one reader, warning with the running count."""

    def __init__(self, where: str):
        self.where, self.total, self.in_a_row = where, 0, 0

    def skip(self, what: str) -> None:
        self.total += 1
        self.in_a_row += 1
        if self.total <= WARNED_SKIPS or self.total % REPEAT == 0:
            later = f"; reported every {REPEAT} from here" if self.total == WARNED_SKIPS else ""
            warnings.warn(
                f"{self.where}: skipped {what} ({self.total} skipped so far{later})", stacklevel=2
            )
        if self.in_a_row > MAX_ERRORS_IN_A_ROW:
            raise UserError(
                f"{self.where}: {self.in_a_row} corrupt samples or shards in a row; "
                "re-pack the shards"
            )


def _opened(paths: Iterable[str], errors: ErrorCount) -> Iterator[dict]:
    """Each shard as an open local file, in webdataset's source form. The paths are opened by
    `open()`, never handed to webdataset's URL opener (which runs `pipe:` names as commands)."""
    for path in paths:
        try:
            stream = open(path, "rb")  # closed when the next shard is asked for
        except OSError as error:
            errors.skip(f"unreadable shard {path} ({error.strerror or error})")
            continue
        with stream:
            yield {"url": path, "stream": stream}


def read_samples(
    paths: Iterable[str], image_key: str, errors: ErrorCount
) -> Iterator[tuple[str, str, bytes]]:
    """(key, shard path, encoded image) per sample of the local shard files, in order. Only the
    image members are read; a shard whose tar structure breaks is skipped from that point on
    (counted)."""

    def skip_shard(error: Exception) -> bool:
        # webdataset appends the stream and the url to a shard's error arguments: keep the reason.
        reason = error.args[0] if error.args else type(error).__name__
        where = f" in {error.args[-1]}" if len(error.args) >= 3 else ""
        errors.skip(f"unreadable shard data ({reason}){where}")
        return True  # webdataset's handler protocol: go on with the next shard

    suffix = "." + image_key
    files = tar_file_expander(
        _opened(paths, errors), handler=skip_shard, select_files=lambda name: name.endswith(suffix)
    )
    for sample in group_by_keys(files, handler=skip_shard):
        if image_key in sample:  # a member named like KEY.x.jpg groups under another extension
            yield sample["__key__"], sample["__url__"], sample[image_key]


def shuffle(
    samples: Iterator[tuple], buffer_size: int, rng: np.random.Generator
) -> Iterator[tuple]:
    """Buffered shuffle of still-encoded samples (small in memory); a size <= 1 keeps the order."""
    if buffer_size <= 1:
        yield from samples
        return
    buffer = list(itertools.islice(samples, buffer_size))
    for sample in samples:
        index = int(rng.integers(len(buffer)))
        yield buffer[index]
        buffer[index] = sample
    # Only a finite stream (none in training) gets here: drain the rest in random order.
    for index in rng.permutation(len(buffer)):
        yield buffer[index]


def fill_batches(
    samples: Iterator[tuple],
    reduction: int,
    image_px: int,
    batch_size: int,
    choose,
    errors: ErrorCount,
    limit: int | None = None,
) -> Iterator[torch.Tensor]:
    """Decode and crop samples into uint8 [B, 3, image_px, image_px] RGB batches.

    choose(height, width) -> ((left, top, side), flip). Corrupt samples are skipped and counted; the
    last batch of a finite stream may be short. Batches are allocated in shared memory inside a
    DataLoader worker so that handing them to the main process copies nothing.
    """
    in_worker = torch.utils.data.get_worker_info() is not None
    remaining = limit
    while remaining is None or remaining > 0:
        size = batch_size if remaining is None else min(batch_size, remaining)
        batch = torch.empty((size, 3, image_px, image_px), dtype=torch.uint8)
        if in_worker:
            batch.share_memory_()
        pixels, filled = batch.numpy(), 0
        for key, path, data in samples:
            image = decode_bgr(data, reduction)
            if image is None:
                errors.skip(f"undecodable sample {key} in {path}")
                continue
            errors.in_a_row = 0
            square, flip = choose(*image.shape[:2])
            crop_into(pixels[filled], image, square, flip)
            filled += 1
            if filled == size:
                break
        if filled:
            yield batch[:filled]
        if filled < size:
            return
        remaining = None if remaining is None else remaining - size
