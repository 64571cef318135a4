"""Streaming shards for training and evaluation: one rank's endless, seeded training stream, the
fixed validation batch, and in-order evaluation batches.

Determinism contract: the training stream is a pure function of (manifest, DataConfig, local
batch, rank, world size, seed, start_step). Every random choice (shard order, shuffle buffer,
crop, flip) comes from a generator seeded by those values; DataLoader workers produce whole
batches and the loader takes them round-robin, so the batch order is fixed too. The training loop
rebuilds the loader at every checkpoint with start_step = that step, so a resumed run sees exactly
the batches of an uninterrupted one without saving any iterator state.

Shards per epoch: each (rank, worker) pair is a reader. In every epoch the train shards are
permuted by (seed, start_step, epoch) and dealt round-robin to the readers, so no two readers (and
no two ranks) read the same shard in an epoch and together they read all of them. With fewer
shards than readers that cannot be done: each reader then draws one shard per epoch at random,
with replacement. Either way every rank's stream is endless, so all ranks yield equal batch counts.
"""

from __future__ import annotations

import itertools
import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ganpaint.config import DataConfig
from ganpaint.data.batches import ErrorCount, fill_batches, read_samples, shuffle
from ganpaint.data.decode import centre_square, decode_reduction, random_square
from ganpaint.data.manifest import check_split, read_manifest, split_paths
from ganpaint.data.packing import MANIFEST
from ganpaint.errors import UserError

__all__ = ["read_manifest", "train_loader", "iterate_split", "val_batch", "epoch_shards"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # the training loop's to handle
SHARD_ORDER, SAMPLE_ORDER = 0, 1  # first seed word: the two kinds of generator never share a stream


def epoch_shards(
    shard_count: int, reader: int, readers: int, seed: int, start_step: int, epoch: int
) -> list[int]:
    """Indices of the shards that `reader` (of `readers`) reads in `epoch`.

    Disjoint across readers and complete when shard_count >= readers; otherwise one shard drawn
    with replacement per reader and epoch.
    """
    if shard_count >= readers:
        order = np.random.default_rng(_words(SHARD_ORDER, seed, start_step, epoch)).permutation(
            shard_count
        )
        return order[reader::readers].tolist()
    draw = np.random.default_rng(_words(SHARD_ORDER, seed, start_step, epoch, reader))
    return [int(draw.integers(shard_count))]


def _words(*values: int) -> list[int]:
    """Seed words for numpy's SeedSequence, which takes non-negative integers only."""
    return [value % 2**64 for value in values]


class TrainStream(torch.utils.data.IterableDataset):
    """One rank's endless stream of augmented training batches (see the module docstring)."""

    def __init__(
        self,
        data: DataConfig,
        local_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        start_step: int,
        counted: bool = False,
    ):
        manifest = read_manifest(data.shards)
        self.paths = split_paths(manifest, data.shards, "train")
        if not self.paths:
            raise UserError(f"{Path(data.shards) / MANIFEST}: the train split holds no images")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        packed_px = int(manifest["parameters"]["size"])
        if packed_px < data.resize_min_px:
            warnings.warn(
                f"{data.shards}: shards packed at {packed_px} px are enlarged to "
                f"{data.resize_min_px}-{data.resize_max_px} px; pack with --size "
                f"{data.resize_max_px} for sharper crops",
                stacklevel=3,
            )
        self.data, self.local_batch = data, local_batch
        self.rank, self.world_size = rank, world_size
        self.seed, self.start_step = seed, start_step
        self.image_key = manifest["image_key"]
        self.reduction = decode_reduction(packed_px, data.resize_max_px)
        self.readers_per_rank = max(1, data.workers)
        self.counted = counted

    def _shard_urls(self, reader: int) -> Iterator[str]:
        readers = self.world_size * self.readers_per_rank
        for epoch in itertools.count():
            for index in epoch_shards(
                len(self.paths), reader, readers, self.seed, self.start_step, epoch
            ):
                yield self.paths[index]

    def __iter__(self) -> Iterator:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None:  # the workers already fill the cores: OpenCV threads would fight them
            cv2.setNumThreads(1)
        data = self.data
        reader = self.rank * self.readers_per_rank + worker
        rng = np.random.default_rng(
            _words(SAMPLE_ORDER, self.seed, self.start_step, self.rank, worker)
        )
        errors = ErrorCount(f"{data.shards} (rank {self.rank}, worker {worker})")
        samples = shuffle(
            read_samples(self._shard_urls(reader), self.image_key, errors), data.shuffle_buffer, rng
        )

        def choose(height: int, width: int) -> tuple[tuple[int, int, int], bool]:
            square = random_square(
                height, width, data.image_px, data.resize_min_px, data.resize_max_px, rng
            )
            return square, bool(data.hflip and rng.random() < 0.5)

        batches = fill_batches(
            samples, self.reduction, data.image_px, self.local_batch, choose, errors
        )
        return _reported(batches, errors, self.counted)


@dataclass(frozen=True)
class ReaderFailure:
    """A reader's UserError, handed to the main process as data: a DataLoader would re-raise it
    with the worker's whole traceback in the message."""

    message: str


def _reported(batches: Iterator[torch.Tensor], errors: ErrorCount, counted: bool) -> Iterator:
    """Each batch (with `counted`: a (batch, samples skipped while filling it) pair), then a
    ReaderFailure if the reader gives up."""
    skipped_before = 0
    try:
        for batch in batches:
            yield (batch, errors.total - skipped_before) if counted else batch
            skipped_before = errors.total
    except UserError as error:
        yield ReaderFailure(str(error))


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """Workers ignore SIGTERM / SIGUSR1 / SIGINT: `timeout`, SLURM, a shell or Ctrl-C may signal
    the whole process group, and a worker dying mid-step would abort the training step the main
    process is finishing before its checkpoint. Workers still exit when the main process closes
    the loader or dies (DataLoader watchdog)."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


@contextmanager
def _stop_signals_deferred() -> Iterator[None]:
    """Hold the stop signals while the loader starts its workers, then deliver them. An interrupt
    half-way through the start would leave running workers that nobody owns, and as they ignore
    SIGTERM, the interpreter's exit would wait for them for ever."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread handles signals
        return
    received = []
    previous = {
        number: signal.signal(number, lambda number, frame: received.append(number))
        for number in STOP_SIGNALS
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in received:
            signal.raise_signal(number)  # now, to the handlers in place


def _one_line_failures(loader: torch.utils.data.DataLoader) -> Iterator:
    """The loader's items; a reader's failure raised here as one line. Closing this generator (or
    leaving it by an exception) stops the loader's workers at once."""
    iterator = None
    try:
        with _stop_signals_deferred():
            iterator = iter(loader)
        for item in iterator:
            if isinstance(item, ReaderFailure):
                raise UserError(item.message)
            yield item
    finally:
        # Not left to the garbage collector, for the same reason: a traceback can keep the
        # iterator (and so its workers) alive until after the interpreter's exit has begun.
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def train_loader(
    data: DataConfig,
    local_batch: int,
    rank: int,
    world_size: int,
    seed: int,
    start_step: int,
    counted: bool = False,
) -> Iterator:
    """Endless uint8 batches [local_batch, 3, image_px, image_px] (CHW, RGB) for one rank; with
    `counted`, (batch, corrupt samples or shards skipped while filling it) pairs.

    data.workers DataLoader workers (0 = in this process); pinned memory when CUDA is available.
    The batch sequence is a pure function of the arguments and the manifest (module docstring).
    A reader that gives up (too many corrupt samples in a row) raises UserError here, in one line.
    """
    stream = TrainStream(data, local_batch, rank, world_size, seed, start_step, counted)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=data.workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        worker_init_fn=_leave_stop_signals_to_the_trainer,
        # A private generator: building the loader must not advance the global torch RNG.
        generator=torch.Generator().manual_seed(_words(seed)[0] % 2**63),
    )
    return _one_line_failures(loader)


def iterate_split(
    shard_dir: str | Path, split: str, image_px: int, batch_size: int, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """The split's images in manifest order as uint8 [B, 3, image_px, image_px] RGB batches.

    Shortest side resized to image_px, centre crop; at most `limit` images; the last batch may be
    short. Corrupt samples are skipped with a warning.
    """
    manifest = read_manifest(shard_dir)
    paths = split_paths(manifest, shard_dir, split)
    errors = ErrorCount(f"{shard_dir} ({split})")
    samples = read_samples(paths, manifest["image_key"], errors)
    reduction = decode_reduction(int(manifest["parameters"]["size"]), image_px)

    def choose(height: int, width: int) -> tuple[tuple[int, int, int], bool]:
        return centre_square(height, width), False

    return fill_batches(samples, reduction, image_px, batch_size, choose, errors, limit)


def val_batch(data: DataConfig, count: int, split: str | None = None) -> torch.Tensor:
    """The first `count` images of `split` (default data.val_split): uint8 [count, 3, px, px].

    Deterministic: shortest side resized to data.image_px, centre crop. An empty split falls back
    to "train" with a warning; a split with fewer images gives fewer (with a warning).
    """
    split = split or data.val_split
    manifest = read_manifest(data.shards)
    check_split(manifest, data.shards, split)  # an unknown split is an error, not a fallback
    if not manifest["splits"][split]["count"]:
        warnings.warn(
            f"{data.shards}: split {split!r} is empty; validating on 'train' images", stacklevel=2
        )
        split = "train"
    batches = list(iterate_split(data.shards, split, data.image_px, max(count, 1), limit=count))
    images = (
        torch.cat(batches)
        if batches
        else torch.empty((0, 3, data.image_px, data.image_px), dtype=torch.uint8)
    )
    if len(images) < count:
        warnings.warn(
            f"{data.shards}: split {split!r} has {len(images)} images, fewer than the "
            f"{count} asked for",
            stacklevel=2,
        )
    return images
