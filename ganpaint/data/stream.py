"""Streaming shards for training and evaluation: one rank's endless, seeded training stream, the
fixed validation batch, and in-order evaluation batches.

Determinism contract: the training stream is a pure function of (manifest, DataConfig, local
batch, rank, world size, seed) and of the position it starts at. Batch b of a rank comes from
reader b mod R of that rank (R = max(1, data.workers) readers, one per DataLoader worker, which
the loader takes round-robin), as that reader's (b // R)-th batch of local_batch consecutive
samples of its stream (ganpaint/data/order.py: shards dealt per epoch, buffered shuffle), cropped
and flipped (unless data.crop is "centre") by a generator seeded by (seed, rank, b), which also
draws which caption of each image is used when data.captions is on. Everything a batch needs is computed from
the manifest's counts (each at most what its shard file can hold: ganpaint/data/manifest.py), so a loader opened at batch b yields exactly what one opened at 0 yields
from its b-th batch on, without decoding the batches before it: the training loop opens one
loader for the whole run, and a resume opens it where the run stopped.

Shards per epoch: in every epoch the train shards are permuted and dealt round-robin to all
readers of all ranks, so no two readers (and no two ranks) read the same shard in an epoch and
together they read all of them. With fewer shards than readers each reader draws one shard per
epoch at random, with replacement. Either way every rank's stream is endless, so all ranks yield
equal batch counts.

A shard directory may be a URL (https://, s3://, gs://): each shard is then fetched and checked
against its manifest sha256 before it is read (ganpaint/data/remote.py), so the stream, its
positions and a resume are the same as from the same shards on disk.
"""

from __future__ import annotations

import atexit
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
from ganpaint.data import remote
from ganpaint.data.batches import (
    ErrorCount,
    Lookahead,
    fill_batches,
    positioned_batch,
    read_samples,
    reader_samples,
)
from ganpaint.data.captions import CaptionTokens, load_tokenizer
from ganpaint.data.decode import centre_square, random_square, scaled_centre_square
from ganpaint.data.manifest import check_split, read_manifest, split_shards
from ganpaint.data.order import ReaderPlan, seed_words
from ganpaint.data.packing import MANIFEST
from ganpaint.errors import UserError

__all__ = [
    "read_manifest",
    "train_loader",
    "iterate_split",
    "held_out_split",
    "val_batch",
]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)  # the training loop's to handle
PREFETCH_BATCHES = 2  # per worker, as DataLoader defaults: each waiting batch holds shared memory
CROPS = 2  # first seed word of the crop generators (ganpaint/data/order.py holds 0 and 1)


class TrainStream(torch.utils.data.IterableDataset):
    """One rank's endless stream of augmented training batches from batch `start_batch` on (see
    the module docstring)."""

    def __init__(
        self,
        data: DataConfig,
        local_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        start_batch: int,
        counted: bool = False,
    ):
        remote.configure(data)  # remote shards carry these settings into the workers
        manifest = read_manifest(data.shards)
        shards = split_shards(manifest, data.shards, "train")
        if not shards:
            raise UserError(
                f"{remote.display(data.shards, MANIFEST)}: the train split holds no images"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        packed_px = manifest["parameters"]["size"]  # informational: decoding reads each header
        if packed_px < data.resize_min_px:
            warnings.warn(
                f"{remote.mask(data.shards)}: shards packed at {packed_px} px are enlarged to "
                f"{data.resize_min_px}-{data.resize_max_px} px; pack with --size "
                f"{data.resize_max_px} for sharper crops",
                stacklevel=3,
            )
        self.paths = [path for path, _ in shards]
        self.counts = [count for _, count in shards]
        self.data, self.local_batch = data, local_batch
        self.rank, self.world_size = rank, world_size
        self.seed, self.start_batch = seed, start_batch
        self.image_key = manifest["image_key"]
        self.needed_px = data.resize_max_px  # the shortest side a JPEG's reduced decode keeps
        self.readers_per_rank = max(1, data.workers)
        self.tokenizer = load_tokenizer(data.shards) if data.captions else None
        self.counted = counted

    def __iter__(self) -> Iterator:
        """The batches (module docstring); with `counted`, (batch, samples skipped for it) pairs;
        a ReaderFailure last if the reader gives up."""
        errors = ErrorCount(f"{remote.mask(self.data.shards)} (rank {self.rank})")
        return _reported(self._batches(errors), errors, self.counted)

    def _batches(self, errors: ErrorCount) -> Iterator:
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None:  # the workers already fill the cores: OpenCV threads would fight them
            cv2.setNumThreads(1)
        data, readers = self.data, self.readers_per_rank
        # The loader takes its workers round-robin from its first batch on: this worker makes
        # batches first, first + readers, ... of the rank, all from the same reader.
        first = self.start_batch + worker
        reader = first % readers
        plan = ReaderPlan(
            self.counts,
            self.rank * readers + reader,
            self.world_size * readers,
            self.seed,
            data.shuffle_buffer,
        )
        errors.where = f"{remote.mask(data.shards)} (rank {self.rank}, reader {reader})"
        start = first // readers * self.local_batch
        samples = Lookahead(
            reader_samples(self.paths, plan, start, self.image_key, errors, data.captions)
        )
        for batch_number in itertools.count(first, readers):
            rng = np.random.default_rng(seed_words(CROPS, self.seed, self.rank, batch_number))
            tokens_of = None
            if self.tokenizer is not None:
                tokens_of = CaptionTokens(self.tokenizer, data.caption_tokens, rng)
            yield positioned_batch(
                samples,
                self.needed_px,
                data.image_px,
                self.local_batch,
                self._chooser(rng),
                errors,
                tokens_of,
            )

    def _chooser(self, rng: np.random.Generator):
        """The crop (and flip) of each image of a batch, drawn from the batch's generator."""
        data = self.data

        def choose(height: int, width: int) -> tuple[tuple[int, int, int], bool]:
            if data.crop == "centre":
                square = scaled_centre_square(height, width, data.image_px, data.resize_min_px)
            else:
                square = random_square(
                    height, width, data.image_px, data.resize_min_px, data.resize_max_px, rng
                )
            return square, bool(data.hflip and rng.random() < 0.5)

        return choose


@dataclass(frozen=True)
class ReaderFailure:
    """A reader's UserError, handed to the main process as data: a DataLoader would re-raise it
    with the worker's whole traceback in the message."""

    message: str


def _reported(batches: Iterator, errors: ErrorCount, counted: bool) -> Iterator:
    """Each batch (with `counted`: a (batch, samples skipped while making it) pair), then a
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
    leaving it by an exception) stops the loader's workers at once, and so does the interpreter's
    exit while it is still open."""
    iterator = shutdown = None
    try:
        with _stop_signals_deferred():  # a stop signal now is raised once shutdown is in place
            iterator = iter(loader)
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                # An exception raised while this generator is suspended (a Ctrl-C between two
                # batches, a crash in the caller) leaves it open and its workers running until
                # the generator is collected, which can be after the interpreter's exit has
                # begun: multiprocessing's exit handler would then wait for ever on workers that
                # ignore SIGTERM. Exit handlers run last-registered first: this one goes before.
                atexit.register(shutdown)
        for item in iterator:
            if isinstance(item, ReaderFailure):
                raise UserError(item.message)
            yield item
    finally:
        # Not left to the garbage collector, for the same reason.
        if shutdown is not None:
            atexit.unregister(shutdown)
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
    """Endless uint8 batches [local_batch, 3, image_px, image_px] (CHW, RGB) for one rank, from
    the stream's batch number `start_step` on (the loader's own steps: one batch each); with
    data.captions, (images, int64 token ids [local_batch, data.caption_tokens]) pairs; with
    `counted`, each of those as an (item, corrupt samples or shards skipped for it) pair.

    data.workers DataLoader workers (0 = in this process), each keeping PREFETCH_BATCHES batches
    ready; pinned memory when CUDA is available, so the copy to the GPU can run asynchronously.
    The batch sequence is a pure function of the arguments and the manifest (module docstring).
    Iterate it once per run: its workers then live as long as the run, with no restart between
    checkpoints (DataLoader's persistent_workers only matters when a loader is iterated again).
    A reader that gives up (too many corrupt samples in a row) raises UserError here, in one line;
    closing the returned generator stops the workers at once.
    """
    stream = TrainStream(data, local_batch, rank, world_size, seed, start_step, counted)
    loader = torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=data.workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=PREFETCH_BATCHES if data.workers else None,
        worker_init_fn=_leave_stop_signals_to_the_trainer,
        # A private generator: building the loader must not advance the global torch RNG.
        generator=torch.Generator().manual_seed(seed_words(seed)[0] % 2**63),
    )
    return _one_line_failures(loader)


def iterate_split(
    shard_dir: str | Path,
    split: str,
    image_px: int,
    batch_size: int,
    limit: int | None = None,
    tokens_of: CaptionTokens | None = None,
) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """The split's images in manifest order as uint8 [B, 3, image_px, image_px] RGB batches; with
    `tokens_of` (rng None: each image's first caption, encoded by the model's tokenizer),
    (images, int64 [B, tokens_of.max_tokens]) pairs.

    Shortest side resized to image_px, centre crop; at most `limit` images; the last batch may be
    short. Corrupt samples are skipped with a warning.
    """
    manifest = read_manifest(shard_dir)
    paths = [path for path, _ in split_shards(manifest, shard_dir, split)]
    errors = ErrorCount(f"{remote.mask(shard_dir)} ({split})")
    samples = read_samples(paths, manifest["image_key"], errors, tokens_of is not None)

    def choose(height: int, width: int) -> tuple[tuple[int, int, int], bool]:
        return centre_square(height, width), False

    return fill_batches(samples, image_px, image_px, batch_size, choose, errors, limit, tokens_of)


def held_out_split(shard_dir: str | Path, preferred: str) -> str:
    """`preferred` if it holds images, else the first of val, test that does, else train (with a
    warning: scores on training images flatter the model)."""
    manifest = read_manifest(shard_dir)
    check_split(manifest, shard_dir, preferred)  # an unknown split is an error, not a fallback
    counts = {name: entry["count"] for name, entry in manifest["splits"].items()}
    for split in (preferred, "val", "test"):
        if counts.get(split):
            return split
    warnings.warn(
        f"{remote.mask(shard_dir)}: no held-out images (val and test are empty); using 'train' "
        "images",
        stacklevel=2,
    )
    return "train"


def val_batch(
    data: DataConfig, count: int, split: str | None = None
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The first `count` images of `split` (default: data.val_split, or the held-out split that
    has images): uint8 [count, 3, px, px]; with data.captions, (images, token ids [count,
    data.caption_tokens] of their first captions).

    Deterministic: shortest side resized to data.image_px, centre crop. A split with fewer images
    gives fewer (with a warning).
    """
    split = split or held_out_split(data.shards, data.val_split)
    tokens_of = None
    if data.captions:
        tokens_of = CaptionTokens(load_tokenizer(data.shards), data.caption_tokens)
    pairs = list(iterate_split(data.shards, split, data.image_px, max(count, 1), count, tokens_of))
    tokens = data.caption_tokens if data.captions else 0
    if not tokens:
        pairs = [(batch, batch.new_zeros((len(batch), 0), dtype=torch.int64)) for batch in pairs]
    images = torch.empty((0, 3, data.image_px, data.image_px), dtype=torch.uint8)
    token_ids = torch.zeros((0, tokens), dtype=torch.int64)
    if pairs:
        images, token_ids = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    if len(images) < count:
        warnings.warn(
            f"{remote.mask(data.shards)}: split {split!r} has {len(images)} images, fewer than the "
            f"{count} asked for",
            stacklevel=2,
        )
    return (images, token_ids) if tokens else images
