"""Which sample a training reader emits at each position of its stream, computed from the
manifest's shard counts alone, so a stream can start at any position without reading what came
before it.

A reader (one DataLoader worker of one rank) reads its epochs one after another. In each epoch
the train shards are permuted by (seed, epoch) and dealt round-robin to the readers; with fewer
shards than readers each reader draws one shard per epoch instead. The reader reads its shards in
turn and shuffles their samples through a buffer of `shuffle_buffer` samples; that buffered
shuffle is played here on sample indices, so the emission order of an epoch is known before any
byte is read and at most `shuffle_buffer` read samples ever wait to be emitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHARD_ORDER, SAMPLE_ORDER = 0, 1  # first seed word: the two kinds of generator never share a stream


def seed_words(*values: int) -> list[int]:
    """Seed words for numpy's SeedSequence, which takes non-negative integers only."""
    return [value % 2**64 for value in values]


def epoch_shards(shard_count: int, reader: int, readers: int, seed: int, epoch: int) -> list[int]:
    """Indices of the shards that `reader` (of `readers`) reads in `epoch`.

    Disjoint across readers and complete when shard_count >= readers; otherwise one shard drawn
    with replacement per reader and epoch.
    """
    if shard_count >= readers:
        order = np.random.default_rng(seed_words(SHARD_ORDER, seed, epoch)).permutation(shard_count)
        return order[reader::readers].tolist()
    draw = np.random.default_rng(seed_words(SHARD_ORDER, seed, epoch, reader))
    return [int(draw.integers(shard_count))]


def buffered_order(count: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """Emission order of `count` samples read in order through a shuffle buffer.

    The buffer fills with the first samples; each later sample replaces a uniformly drawn one,
    which is emitted; the buffer drains in random order at the end. Returns the read indices in
    emission order. A buffer of <= 1 keeps the read order.
    """
    if buffer_size <= 1:
        return np.arange(count)
    filled = min(buffer_size, count)
    buffer = list(range(filled))
    emitted = []
    slots = rng.integers(filled, size=count - filled).tolist()
    for incoming, slot in zip(range(filled, count), slots, strict=True):
        emitted.append(buffer[slot])
        buffer[slot] = incoming
    emitted.extend(buffer[index] for index in rng.permutation(filled))
    return np.asarray(emitted, dtype=np.int64)


@dataclass(frozen=True)
class EpochPlan:
    """One reader's epoch: its shards in reading order and the emission order of their samples."""

    shards: list[int]  # indices into the train split's shard list
    sizes: list[int]  # samples the manifest lists for each of them
    starts: list[int]  # read index of each shard's first sample
    order: np.ndarray  # read indices in emission order

    @property
    def size(self) -> int:
        return len(self.order)

    def positions(self) -> np.ndarray:
        """Emission position of every read index (the inverse of `order`)."""
        inverse = np.empty(self.size, dtype=np.int64)
        inverse[self.order] = np.arange(self.size)
        return inverse


class ReaderPlan:
    """The epochs of reader `reader` (of `readers`) over shards holding `counts` samples each."""

    def __init__(
        self, counts: list[int], reader: int, readers: int, seed: int, shuffle_buffer: int
    ):
        self.counts, self.reader, self.readers = counts, reader, readers
        self.seed, self.shuffle_buffer = seed, shuffle_buffer

    def _shards(self, epoch: int) -> list[int]:
        return epoch_shards(len(self.counts), self.reader, self.readers, self.seed, epoch)

    def epoch(self, epoch: int) -> EpochPlan:
        shards = self._shards(epoch)
        sizes = [self.counts[index] for index in shards]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        rng = np.random.default_rng(seed_words(SAMPLE_ORDER, self.seed, self.reader, epoch))
        return EpochPlan(
            shards, sizes, starts, buffered_order(sum(sizes), self.shuffle_buffer, rng)
        )

    def locate(self, position: int) -> tuple[int, int]:
        """(epoch, offset in that epoch) of the reader's `position`-th sample. Counts the epochs'
        sizes only (a permutation of the shard list each), so it is quick for any position."""
        epoch = 0
        while position >= (size := sum(self.counts[index] for index in self._shards(epoch))):
            position -= size
            epoch += 1
        return epoch, position
