"""From tar shards to decoded batches: reading samples (in order, or a reader's epoch in its
planned emission order from any position), counting corrupt data, and filling uint8 CHW RGB
batches with crops (and, for captioned data, token id batches).
"""

from __future__ import annotations

import collections
import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from webdataset.tariterators import group_by_keys, tar_file_expander

from ganpaint.data import remote
from ganpaint.data.decode import crop_into, decode_bgr
from ganpaint.data.order import EpochPlan, ReaderPlan
from ganpaint.errors import UserError

MAX_ERRORS_IN_A_ROW = 1000  # corrupt samples or shards with no good one between: give up
WARNED_SKIPS = 10  # each reader warns of its first skips one by one, then of every REPEAT-th
REPEAT = 100
Sample = tuple  # (key, shard path, encoded image[, json member bytes when read with meta])
Choose = Callable[[int, int], tuple[tuple[int, int, int], bool]]  # (h, w) -> (square, flip)


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
    `open()`, never handed to webdataset's URL opener (which runs `pipe:` names as commands). A
    remote shard comes as a local copy already checked against its manifest sha256, the next
    one fetched while this one is read (ganpaint/data/remote.py)."""
    paths = list(paths)
    for index, path in enumerate(paths):
        if index + 1 < len(paths):
            remote.prefetch(paths[index + 1])
        try:  # each stream is closed when the next shard is asked for
            stream = remote.open_shard(path) if remote.is_shard(path) else open(path, "rb")
        except remote.BadShard as error:  # data.on_bad_shard=skip
            errors.skip(f"bad shard {error}")
            continue
        except OSError as error:
            errors.skip(f"unreadable shard {path} ({error.strerror or error})")
            continue
        with stream:
            yield {"url": path, "stream": stream}


def read_samples(
    paths: Iterable[str], image_key: str, errors: ErrorCount, with_meta: bool = False
) -> Iterator[Sample]:
    """(key, shard path, encoded image) per sample of the local shard files, in order, plus the
    json member's bytes (b"" when absent) if `with_meta`. Only those members are read; a shard
    whose tar structure breaks is skipped from that point on (counted)."""

    def skip_shard(error: Exception) -> bool:
        # webdataset appends the stream and the url to a shard's error arguments: keep the reason.
        reason = error.args[0] if error.args else type(error).__name__
        where = f" in {error.args[-1]}" if len(error.args) >= 3 else ""
        errors.skip(f"unreadable shard data ({reason}){where}")
        return True  # webdataset's handler protocol: go on with the next shard

    suffixes = ("." + image_key, ".json") if with_meta else ("." + image_key,)
    files = tar_file_expander(
        _opened(paths, errors),
        handler=skip_shard,
        select_files=lambda name: name.endswith(suffixes),
    )
    for sample in group_by_keys(files, handler=skip_shard):
        if image_key in sample:  # a member named like KEY.x.jpg groups under another extension
            found = sample["__key__"], sample["__url__"], sample[image_key]
            yield (*found, sample.get("json", b"")) if with_meta else found


def fill_batches(
    samples: Iterator[tuple],
    needed_px: int,
    image_px: int,
    batch_size: int,
    choose,
    errors: ErrorCount,
    limit: int | None = None,
    tokens_of=None,
) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Decode and crop samples into uint8 [B, 3, image_px, image_px] RGB batches.

    needed_px: the shortest side a JPEG's reduced decode must keep (decode_bgr).
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
            image = decode_bgr(data, needed_px)
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


def _read_epoch(
    paths: list[str],
    plan: EpochPlan,
    offset: int,
    image_key: str,
    errors: ErrorCount,
    with_meta: bool,
) -> Iterator[tuple[int, Sample]]:
    """(read index, sample) of the epoch's samples emitted at `offset` or later, in read order.
    A shard whose samples were all emitted before `offset` is not opened. A remote shard is
    fetched while the one before it is read; one that fails its sha256 check under
    data.on_bad_shard=skip has the next good shard read in its place (remote.usable_shard)."""
    emitted_at = plan.positions()
    reads = [
        (shard, size, start, emitted_at[start : start + size] >= offset)
        for shard, size, start in zip(plan.shards, plan.sizes, plan.starts, strict=True)
    ]
    reads = [read for read in reads if read[3].any()]
    for number, (shard, size, start, wanted) in enumerate(reads):
        if number + 1 < len(reads):
            remote.prefetch(paths[reads[number + 1][0]])
        source = remote.usable_shard(paths, shard, errors)
        shard_samples = read_samples([source], image_key, errors, with_meta)
        for ordinal, sample in enumerate(shard_samples):
            if ordinal == size:
                if source is paths[shard]:  # a stand-in may hold more: it is cut to this size
                    errors.skip(f"samples of {source} beyond the {size} its manifest lists")
                break
            if wanted[ordinal]:
                yield start + ordinal, sample


def _missing(paths: list[str], plan: EpochPlan, read_index: int, with_meta: bool) -> Sample:
    """A placeholder for a sample the manifest lists but its shard no longer holds."""
    shard = int(np.searchsorted(plan.starts, read_index, side="right")) - 1
    ordinal = read_index - plan.starts[shard]
    found = f"#{ordinal} (missing: the shard ends early)", paths[plan.shards[shard]], b""
    return (*found, b"") if with_meta else found


def epoch_samples(
    paths: list[str],
    plan: EpochPlan,
    offset: int,
    image_key: str,
    errors: ErrorCount,
    with_meta: bool = False,
) -> Iterator[Sample]:
    """The epoch's samples in `plan.order` from emission position `offset` on.

    The shards are read once, in order; a sample waits until its turn, so at most the shuffle
    buffer's size of them is held. A sample its shard lacks comes as an empty placeholder.
    """
    reading = _read_epoch(paths, plan, offset, image_key, errors, with_meta)
    held: dict[int, Sample] = {}
    cursor = -1  # the last read index taken from the shards
    for read_index in plan.order[offset:].tolist():
        while read_index not in held and cursor < read_index:
            cursor, sample = next(reading, (plan.size, None))
            if sample is not None:
                held[cursor] = sample
        yield held.pop(read_index, None) or _missing(paths, plan, read_index, with_meta)


def reader_samples(
    paths: list[str],
    plan: ReaderPlan,
    start: int,
    image_key: str,
    errors: ErrorCount,
    with_meta: bool = False,
) -> Iterator[Sample]:
    """A reader's endless sample stream from its `start`-th sample, epoch after epoch."""
    epoch, offset = plan.locate(start)
    for number in itertools.count(epoch):
        yield from epoch_samples(paths, plan.epoch(number), offset, image_key, errors, with_meta)
        offset = 0


class Lookahead:
    """An iterator whose coming items can be looked at without being consumed."""

    def __init__(self, items: Iterator):
        self.items, self.ahead = items, collections.deque()

    def __iter__(self) -> Lookahead:
        return self

    def __next__(self):
        return self.ahead.popleft() if self.ahead else next(self.items)

    def peek(self, index: int):
        while len(self.ahead) <= index:
            self.ahead.append(next(self.items))
        return self.ahead[index]


def _decode(sample: Sample, needed_px: int, errors: ErrorCount | None) -> np.ndarray | None:
    key, path, data = sample[:3]
    image = decode_bgr(data, needed_px)
    if errors is not None:
        if image is None:
            errors.skip(f"undecodable sample {key} in {path}")
        else:
            errors.in_a_row = 0
    return image


def _first_good_ahead(samples: Lookahead, needed_px: int, where: str) -> tuple[np.ndarray, Sample]:
    """(decoded image, sample) of the first good sample ahead, not consumed."""
    for ahead in range(MAX_ERRORS_IN_A_ROW + 1):
        sample = samples.peek(ahead)
        image = _decode(sample, needed_px, None)
        if image is not None:
            return image, sample
    raise UserError(
        f"{where}: over {MAX_ERRORS_IN_A_ROW} corrupt samples or shards in a row; re-pack the shards"
    )


def positioned_batch(
    samples: Lookahead,
    needed_px: int,
    image_px: int,
    batch_size: int,
    choose: Choose,
    errors: ErrorCount,
    tokens_of=None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The next `batch_size` samples decoded (keeping a shortest side of `needed_px`: decode_bgr)
    and cropped into a uint8 [B, 3, P, P] RGB batch; with `tokens_of` (a `CaptionTokens`, for
    samples read with meta), (batch, token ids [B, T]).

    A batch is always made of exactly its own samples, so a stream's batches stay a pure function
    of their positions: a corrupt or missing sample (skipped and counted) is replaced by a copy of
    a good image of the same batch, or, in a batch with none, by the next good sample ahead, looked
    at without being consumed. Allocated in shared memory inside a DataLoader worker.
    """
    batch = torch.empty((batch_size, 3, image_px, image_px), dtype=torch.uint8)
    tokens = (
        None
        if tokens_of is None
        else torch.zeros((batch_size, tokens_of.max_tokens), dtype=torch.int64)
    )
    if torch.utils.data.get_worker_info() is not None:
        batch.share_memory_()
        if tokens is not None:
            tokens.share_memory_()
    pixels, good = batch.numpy(), []
    for index in range(batch_size):
        sample = next(samples)
        image = _decode(sample, needed_px, errors)
        if image is not None:
            crop_into(pixels[index], image, *choose(*image.shape[:2]))
            if tokens is not None:
                tokens[index] = torch.from_numpy(tokens_of(sample[3]))
            good.append(index)
    if not good:
        ahead = _first_good_ahead(samples, needed_px, errors.where)
        crop_into(pixels[0], ahead[0], *choose(*ahead[0].shape[:2]))
        if tokens is not None:
            tokens[0] = torch.from_numpy(tokens_of(ahead[1][3]))
        good.append(0)
    bad = sorted(set(range(batch_size)) - set(good))
    for count, index in enumerate(bad):
        pixels[index] = pixels[good[count % len(good)]]
        if tokens is not None:
            tokens[index] = tokens[good[count % len(good)]]
    return batch if tokens is None else (batch, tokens)
