"""Streaming shards for training and evaluation: one rank's endless, seeded training stream, the
fixed validation batch, and in-order evaluation batches.

Determinism contract: the training stream is a pure function of (manifest, DataConfig, local
batch, rank, world size, seed) and of the position it starts at. Batch b of a rank comes from
reader b mod R of that rank (R = max(1, data.workers) readers, one per DataLoader worker, which
the loader takes round-robin), as that reader's (b // R)-th batch of local_batch consecutive
samples of its stream (ganpaint/data/order.py: shards dealt per epoch, buffered shuffle), cropped
and flipped (unless data.crop is "centre") by a generator seeded by (seed, rank, b), which also
draws which caption of each image is used when data.captions is on. Everything a batch needs is computed from
the manifest's counts, so a loader opened at batch b yields exactly what one opened at 0 yields
from its b-th batch on, without decoding the batches before it: the training loop opens one
loader for the whole run, and a resume opens it where the run stopped.

Shards per epoch: in every epoch the train shards are permuted and dealt round-robin to all
readers of all ranks, so no two readers (and no two ranks) read the same shard in an epoch and
together they read all of them. With fewer shards than readers each reader draws one shard per
epoch at random, with replacement. Either way every rank's stream is endless, so all ranks yield
equal batch counts.
"""

from __future__ import annotations

import itertools
import json
import signal
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from ganpaint.config import DataConfig
from ganpaint.data.batches import (
    ErrorCount,
    Lookahead,
    fill_batches,
    positioned_batch,
    read_samples,
    reader_samples,
)
from ganpaint.data.captions import CaptionTokens, load_tokenizer
from ganpaint.data.decode import (
    centre_square,
    decode_reduction,
    random_square,
    scaled_centre_square,
)
from ganpaint.data.order import ReaderPlan, seed_words
from ganpaint.data.packing import MANIFEST
from ganpaint.errors import UserError

PREFETCH_BATCHES = 2  # per worker, as DataLoader defaults: each waiting batch holds shared memory
CROPS = 2  # first seed word of the crop generators (ganpaint/data/order.py holds 0 and 1)


def read_manifest(shard_dir: str | Path) -> dict:
    """The shard directory's manifest.json. UserError (one line) if missing or not a manifest."""
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{path}: not found; pack shards first: ganpaint shards --output {shard_dir} ..."
        )
    try:
        manifest = json.loads(path.read_text())
        splits = manifest["splits"]
        valid = (
            all(isinstance(splits[name]["shards"], list) for name in splits)
            and len(manifest["mean_rgb"]) == 3
            and int(manifest["parameters"]["size"]) > 0
            and isinstance(manifest["image_key"], str)
        )
    except (ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{path}: not a ganpaint shard manifest ({type(error).__name__}: {error})"
        ) from None
    if not valid:
        raise UserError(f"{path}: not a ganpaint shard manifest")
    return manifest


def _split_shards(manifest: dict, shard_dir: str | Path, split: str) -> list[tuple[str, int]]:
    """(path, sample count) of the split's non-empty shards, in manifest order; UserError if one
    is missing."""
    if split not in manifest["splits"]:
        raise UserError(
            f"{Path(shard_dir) / MANIFEST}: no split {split!r} "
            f"(has {', '.join(manifest['splits'])})"
        )
    paths = []
    for shard in manifest["splits"][split]["shards"]:
        path = Path(shard_dir) / shard["name"]
        if not path.is_file():
            raise UserError(f"{path}: listed in {MANIFEST} but missing")
        if shard["count"]:
            paths.append((str(path), int(shard["count"])))
    return paths


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
    ):
        manifest = read_manifest(data.shards)
        shards = _split_shards(manifest, data.shards, "train")
        if not shards:
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
        self.paths = [path for path, _ in shards]
        self.counts = [count for _, count in shards]
        self.data, self.local_batch = data, local_batch
        self.rank, self.world_size = rank, world_size
        self.seed, self.start_batch = seed, start_batch
        self.image_key = manifest["image_key"]
        self.reduction = decode_reduction(packed_px, data.resize_max_px)
        self.readers_per_rank = max(1, data.workers)
        self.tokenizer = load_tokenizer(data.shards) if data.captions else None

    def __iter__(self) -> Iterator[torch.Tensor]:
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
        errors = ErrorCount(f"{data.shards} (rank {self.rank}, reader {reader})")
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
                self.reduction,
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


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """Workers ignore SIGTERM / SIGUSR1: `timeout`, SLURM or a shell may signal the whole process
    group, and a worker dying mid-step would abort the training step the main process is finishing
    before its checkpoint. Workers still exit when the main process does (DataLoader watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def train_loader(
    data: DataConfig, local_batch: int, rank: int, world_size: int, seed: int, start_step: int
) -> Iterable[torch.Tensor]:
    """Endless uint8 batches [local_batch, 3, image_px, image_px] (CHW, RGB) for one rank, from
    the stream's batch number `start_step` on (the loader's own steps: one batch each); with
    data.captions, (images, int64 token ids [local_batch, data.caption_tokens]) pairs.

    data.workers DataLoader workers (0 = in this process), each keeping PREFETCH_BATCHES batches
    ready; pinned memory when CUDA is available, so the copy to the GPU can run asynchronously.
    The batch sequence is a pure function of the arguments and the manifest (module docstring).
    Iterate it once per run: its workers then live as long as the run, with no restart between
    checkpoints (DataLoader's persistent_workers only matters when a loader is iterated again).
    """
    stream = TrainStream(data, local_batch, rank, world_size, seed, start_step)
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=data.workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=PREFETCH_BATCHES if data.workers else None,
        worker_init_fn=_leave_stop_signals_to_the_trainer,
        # A private generator: building the loader must not advance the global torch RNG.
        generator=torch.Generator().manual_seed(seed_words(seed)[0] % 2**63),
    )


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
    paths = [path for path, _ in _split_shards(manifest, shard_dir, split)]
    errors = ErrorCount(f"{shard_dir} ({split})")
    samples = read_samples(paths, manifest["image_key"], errors, tokens_of is not None)
    reduction = decode_reduction(int(manifest["parameters"]["size"]), image_px)

    def choose(height: int, width: int) -> tuple[tuple[int, int, int], bool]:
        return centre_square(height, width), False

    return fill_batches(samples, reduction, image_px, batch_size, choose, errors, limit, tokens_of)


def held_out_split(shard_dir: str | Path, preferred: str) -> str:
    """`preferred` if it holds images, else the first of val, test that does, else train (with a
    warning: scores on training images flatter the model)."""
    manifest = read_manifest(shard_dir)
    _split_shards(manifest, shard_dir, preferred)  # an unknown split is an error, not a fallback
    counts = {name: entry["count"] for name, entry in manifest["splits"].items()}
    for split in (preferred, "val", "test"):
        if counts.get(split):
            return split
    warnings.warn(
        f"{shard_dir}: no held-out images (val and test are empty); using 'train' images",
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
            f"{data.shards}: split {split!r} has {len(images)} images, fewer than the "
            f"{count} asked for",
            stacklevel=2,
        )
    return (images, token_ids) if tokens else images
