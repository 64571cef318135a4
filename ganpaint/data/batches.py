"""From tar shards to decoded batches: reading samples, the shuffle buffer, counting corrupt data,
and filling uint8 CHW RGB batches with crops (and, for captioned data, token id batches).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
import webdataset as wds

from ganpaint.data.decode import crop_into, decode_bgr
from ganpaint.errors import UserError

MAX_ERRORS_IN_A_ROW = 1000  # corrupt samples or shards with no good one between: give up


class ErrorCount:
    """Counts skipped samples and shards for one reader, warning with the running count."""

    def __init__(self, where: str):
        self.where, self.total, self.in_a_row = where, 0, 0

    def skip(self, what: str) -> None:
        self.total += 1
        self.in_a_row += 1
        warnings.warn(f"{self.where}: skipped {what} ({self.total} skipped so far)", stacklevel=2)
        if self.in_a_row > MAX_ERRORS_IN_A_ROW:
            raise UserError(
                f"{self.where}: {self.in_a_row} corrupt samples or shards in a row; "
                "re-pack the shards"
            )


def read_samples(
    paths: Iterable[str], image_key: str, errors: ErrorCount, with_meta: bool = False
) -> Iterator[tuple]:
    """(key, shard path, encoded image) per sample of the shards, in order, plus the json member's
    bytes (b"" when absent) if `with_meta`. Only those members are read; a shard whose tar
    structure breaks is skipped from that point on (counted)."""

    def skip_shard(error: Exception) -> bool:
        errors.skip(f"unreadable shard data ({error})")
        return True  # webdataset's handler protocol: go on with the next shard

    suffixes = ("." + image_key, ".json") if with_meta else ("." + image_key,)
    sources = ({"url": path} for path in paths)
    for sample in wds.tarfile_samples(
        sources, handler=skip_shard, select_files=lambda name: name.endswith(suffixes)
    ):
        if image_key in sample:  # a member named like KEY.x.jpg groups under another extension
            found = sample["__key__"], sample["__url__"], sample[image_key]
            yield (*found, sample.get("json", b"")) if with_meta else found


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
    tokens_of=None,
) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Decode and crop samples into uint8 [B, 3, image_px, image_px] RGB batches.

    choose(height, width) -> ((left, top, side), flip). With `tokens_of` (a `CaptionTokens`,
    samples read `with_meta`) each batch comes with the int64 [B, tokens_of.max_tokens] token ids
    of its images' captions, drawn after the crop. Corrupt samples are skipped and counted; the
    last batch of a finite stream may be short. Batches are allocated in shared memory inside a
    DataLoader worker so that handing them to the main process copies nothing.
    """
    in_worker = torch.utils.data.get_worker_info() is not None
    remaining = limit
    while remaining is None or remaining > 0:
        size = batch_size if remaining is None else min(batch_size, remaining)
        batch = torch.empty((size, 3, image_px, image_px), dtype=torch.uint8)
        tokens = None
        if tokens_of is not None:
            tokens = torch.zeros((size, tokens_of.max_tokens), dtype=torch.int64)
        if in_worker:
            batch.share_memory_()
            if tokens is not None:
                tokens.share_memory_()
        pixels, filled = batch.numpy(), 0
        for key, path, data, *meta in samples:
            image = decode_bgr(data, reduction)
            if image is None:
                errors.skip(f"undecodable sample {key} in {path}")
                continue
            errors.in_a_row = 0
            square, flip = choose(*image.shape[:2])
            crop_into(pixels[filled], image, square, flip)
            if tokens is not None:
                tokens[filled] = torch.from_numpy(tokens_of(meta[0]))
            filled += 1
            if filled == size:
                break
        if filled:
            yield batch[:filled] if tokens is None else (batch[:filled], tokens[:filled])
        if filled < size:
            return
        remaining = None if remaining is None else remaining - size
