"""Streaming: shapes, the determinism contract, per-rank shard dealing, corrupt data, the fixed
validation batch and in-order evaluation batches, all read from real tar shards."""

from __future__ import annotations

import dataclasses
import io
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import webdataset as wds

from ganpaint.config import DataConfig
from ganpaint.data.order import buffered_order, epoch_shards
from ganpaint.data.shards import pack
from ganpaint.data.stream import iterate_split, read_manifest, train_loader, val_batch
from ganpaint.errors import UserError


def shard_images(path: Path) -> list[np.ndarray]:
    """A shard's images in order as CHW RGB, decoded without the project's code."""
    images = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".jpg"):
                data = np.frombuffer(tar.extractfile(member).read(), np.uint8)
                bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
                images.append(bgr[..., ::-1].transpose(2, 0, 1).copy())
    return images


def take(loader, count: int) -> list[torch.Tensor]:
    stream = iter(loader)
    return [next(stream) for _ in range(count)]


def identity_data(shards: Path, **changes) -> DataConfig:
    """Crops that are the stored 64-px images themselves: no resize, no flip, no shuffle."""
    values = dict(
        shards=str(shards),
        image_px=64,
        resize_min_px=64,
        resize_max_px=64,
        hflip=False,
        workers=0,
        shuffle_buffer=0,
    )
    return DataConfig(**{**values, **changes})


def test_read_manifest_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="manifest.json: not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="not a ganpaint shard manifest") as caught:
        read_manifest(tmp_path)
    assert "\n" not in str(caught.value)


def test_train_batches_have_the_promised_shape_and_type(synthetic_shards, make_config):
    data = make_config(synthetic_shards).data
    for batch in take(train_loader(data, 4, rank=0, world_size=1, seed=0, start_step=0), 3):
        assert batch.shape == (4, 3, 32, 32) and batch.dtype == torch.uint8
        assert batch.is_contiguous() and batch.float().std() > 10  # real pictures, not blanks


def test_stream_is_a_pure_function_of_its_arguments(synthetic_shards, make_config):
    data = make_config(synthetic_shards).data

    def batches(**changes):
        arguments = dict(rank=0, world_size=2, seed=3, start_step=10) | changes
        return torch.stack(take(train_loader(data, 4, **arguments), 5))

    reference = batches()
    assert torch.equal(reference, batches())
    for changes in (dict(start_step=20), dict(seed=4), dict(rank=1)):
        assert not torch.equal(reference, batches(**changes)), changes
    # With worker processes too: each worker makes whole batches, taken round-robin.
    workers = dataclasses.replace(data, workers=2)
    first = take(train_loader(workers, 4, rank=0, world_size=1, seed=0, start_step=0), 6)
    second = take(train_loader(workers, 4, rank=0, world_size=1, seed=0, start_step=0), 6)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_building_a_loader_leaves_the_global_rng_alone(synthetic_shards, make_config):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    take(train_loader(make_config(synthetic_shards).data, 4, 0, 1, 0, 0), 2)
    assert torch.equal(torch.rand(3), expected)


def test_two_ranks_read_disjoint_shards_that_cover_the_split(synthetic_shards):
    manifest = read_manifest(synthetic_shards)
    owner = {}  # image bytes -> shard name
    for shard in manifest["splits"]["train"]["shards"]:
        for image in shard_images(synthetic_shards / shard["name"]):
            owner[image.tobytes()] = shard["name"]
    assert len(owner) == 96  # 6 shards of 16 distinct images
    read = {}
    for rank in (0, 1):  # one epoch per rank: 3 shards of 16 = 12 batches of 4
        batches = take(train_loader(identity_data(synthetic_shards), 4, rank, 2, 7, 0), 12)
        images = [image.numpy().tobytes() for batch in batches for image in batch]
        assert len(set(images)) == 48
        read[rank] = {owner[image] for image in images}
        assert sum(owner[image] in read[rank] for image in owner) == 48  # whole shards
    assert not read[0] & read[1]
    assert read[0] | read[1] == {shard["name"] for shard in manifest["splits"]["train"]["shards"]}


def test_epoch_dealing_with_workers_and_with_too_few_shards():
    for epoch in range(4):
        dealt = [epoch_shards(6, reader, 4, seed=1, epoch=epoch) for reader in range(4)]
        flat = [index for shards in dealt for index in shards]
        assert sorted(flat) == list(range(6))  # disjoint and complete across 2 ranks x 2 workers
    assert epoch_shards(6, 0, 4, 1, 0) != epoch_shards(6, 0, 4, 1, 1)  # reshuffled per epoch
    picks = {
        tuple(epoch_shards(3, reader, 8, 1, epoch)) for reader in range(8) for epoch in range(5)
    }
    assert all(len(pick) == 1 and 0 <= pick[0] < 3 for pick in picks)
    assert len({pick[0] for pick in picks}) == 3  # resampling reaches every shard


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory) -> Path:
    """40 train images in shards of 16, 16 and 8."""
    out = tmp_path_factory.mktemp("uneven")
    pack(
        "synthetic",
        out,
        size=64,
        count=48,
        val_fraction=4 / 48,
        split_max_count=16,
        workers=1,
        progress=False,
    )
    assert [s["count"] for s in read_manifest(out)["splits"]["train"]["shards"]] == [16, 16, 8]
    return out


@pytest.mark.parametrize("world_size", [2, 4], ids=["uneven", "fewer-shards-than-ranks"])
def test_every_rank_streams_without_end(uneven_shards, world_size):
    data = identity_data(uneven_shards, shuffle_buffer=8)
    for rank in range(world_size):
        batches = take(train_loader(data, 4, rank, world_size, 0, 0), 25)  # > 2 epochs each
        assert len(batches) == 25 and all(batch.shape == (4, 3, 64, 64) for batch in batches)


def corrupt_copy(source: Path, target: Path) -> Path:
    """Copy the shards, insert an undecodable sample into train-000000 and truncate train-000001."""
    shutil.copytree(source, target)
    first = target / "train-000000.tar"
    with tarfile.open(first) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    with tarfile.open(first, "w") as tar:
        for position, (member, data) in enumerate(members):
            if position == 4:
                for name, payload in (
                    ("badkey.jpg", b"\xff\xd8 not a jpeg"),
                    ("badkey.json", b"{}"),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
            tar.addfile(member, io.BytesIO(data))
    second = target / "train-000001.tar"
    second.write_bytes(second.read_bytes()[: 3 * 1024 + 100])
    return target


def test_corrupt_members_and_shards_are_skipped_and_counted(synthetic_shards, tmp_path):
    shards = corrupt_copy(synthetic_shards, tmp_path / "corrupt")
    with pytest.warns(UserWarning) as caught:
        images = torch.cat(list(iterate_split(shards, "train", 64, 16)))
    messages = [str(warning.message) for warning in caught]
    assert any(
        "skipped undecodable sample badkey" in m and "(1 skipped so far)" in m for m in messages
    )
    assert any("unreadable shard data" in m and "(2 skipped so far)" in m for m in messages)
    stored = {image.tobytes() for image in shard_images(synthetic_shards / "train-000000.tar")}
    assert 80 < len(images) < 96  # the truncated shard's tail is lost, nothing else
    assert sum(image.numpy().tobytes() in stored for image in images) == 16
    data = identity_data(shards, shuffle_buffer=16)
    with pytest.warns(UserWarning, match="skipped"):
        batches = take(train_loader(data, 8, 0, 1, 0, 0), 30)  # several epochs through both
    assert all(batch.float().std() > 10 for batch in batches)


def test_val_batch_is_the_first_images_centre_cropped(synthetic_shards):
    expected = shard_images(synthetic_shards / "val-000000.tar")[:5]
    batch = val_batch(identity_data(synthetic_shards), 5)
    assert batch.shape == (5, 3, 64, 64) and batch.dtype == torch.uint8
    assert all(
        np.array_equal(image.numpy(), stored) for image, stored in zip(batch, expected, strict=True)
    )
    small = val_batch(
        identity_data(synthetic_shards, image_px=32, resize_min_px=32, resize_max_px=32), 5
    )
    for image, stored in zip(small, expected, strict=True):
        shrunk = cv2.resize(stored.transpose(1, 2, 0), (32, 32), interpolation=cv2.INTER_AREA)
        assert np.abs(image.numpy().transpose(1, 2, 0).astype(int) - shrunk).mean() < 4
    assert torch.equal(
        val_batch(identity_data(synthetic_shards), 5, split="test")[0],
        torch.from_numpy(shard_images(synthetic_shards / "test-000000.tar")[0]),
    )


def test_val_batch_falls_back_to_train_when_the_split_is_empty(tmp_path):
    pack("synthetic", tmp_path, size=64, count=12, val_fraction=0.0, workers=1, progress=False)
    with pytest.warns(UserWarning, match="no held-out images"):
        batch = val_batch(identity_data(tmp_path), 4)
    assert np.array_equal(batch[0].numpy(), shard_images(tmp_path / "train-000000.tar")[0])
    with pytest.raises(UserError, match="no split 'nosuch'"):
        val_batch(identity_data(tmp_path), 4, split="nosuch")


def test_iterate_split_batches_in_manifest_order(synthetic_shards):
    sizes = [len(batch) for batch in iterate_split(synthetic_shards, "val", 48, 4, limit=10)]
    assert sizes == [4, 4, 2]
    everything = torch.cat(list(iterate_split(synthetic_shards, "train", 64, 32)))
    stored = [
        image
        for shard in read_manifest(synthetic_shards)["splits"]["train"]["shards"]
        for image in shard_images(synthetic_shards / shard["name"])
    ]
    assert len(everything) == 96
    assert all(np.array_equal(a.numpy(), b) for a, b in zip(everything, stored, strict=True))


def test_shards_read_back_with_the_webdataset_library(synthetic_shards):
    url = str(synthetic_shards / "val-000000.tar")
    samples = list(
        wds.WebDataset(url, shardshuffle=False, nodesplitter=wds.split_by_node).decode("rgb8")
    )
    assert len(samples) == 16 and samples[0]["__key__"] == "00000096"  # val follows 96 train
    assert samples[0]["jpg"].shape == (64, 64, 3)
    assert samples[0]["json"]["size"] == [64, 64] and samples[0]["json"]["source"] == "synthetic:96"


def test_validation_and_eval_use_a_held_out_split_that_has_images(tmp_path):
    from ganpaint.data.stream import held_out_split

    pack("synthetic", tmp_path, size=32, count=20, val_fraction=0.0, workers=1, progress=False)
    with pytest.warns(UserWarning, match="no held-out images"):
        assert held_out_split(tmp_path, "val") == "train"
    assert held_out_split(tmp_path, "train") == "train"
    with pytest.raises(UserError, match="nope"):
        held_out_split(tmp_path, "nope")


@pytest.mark.parametrize(
    "workers, starts", [(0, (5, 13)), (2, (13,))], ids=["in-process", "two-workers"]
)
def test_a_loader_opened_at_batch_k_yields_the_stream_from_k(
    workers, starts, synthetic_shards, make_config
):
    """Resume positions the stream directly: no batch before k is replayed, and none differs."""
    data = dataclasses.replace(make_config(synthetic_shards).data, workers=workers)
    whole = take(train_loader(data, 4, 1, 2, 5, 0), 30)  # 2 readers per rank: > 2 epochs each
    for start in starts:
        resumed = take(train_loader(data, 4, 1, 2, 5, start), 30 - start)
        assert all(torch.equal(a, b) for a, b in zip(whole[start:], resumed, strict=True)), start


def test_positioning_holds_over_corrupt_and_missing_samples(synthetic_shards, tmp_path):
    shards = corrupt_copy(synthetic_shards, tmp_path / "corrupt")
    data = identity_data(shards, shuffle_buffer=16, hflip=True)
    with pytest.warns(UserWarning, match="skipped"):
        whole = take(train_loader(data, 8, 0, 1, 3, 0), 16)
        resumed = take(train_loader(data, 8, 0, 1, 3, 9), 7)
    assert all(torch.equal(a, b) for a, b in zip(whole[9:], resumed, strict=True))
    assert all(batch.float().std() > 10 for batch in whole)


def test_buffered_order_is_a_permutation_that_holds_at_most_the_buffer():
    rng = np.random.default_rng(0)
    order = buffered_order(100, 8, rng)
    assert sorted(order.tolist()) == list(range(100))
    assert all(read < emitted + 8 for emitted, read in enumerate(order))  # read before its turn
    assert order.tolist() != list(range(100))
    assert buffered_order(10, 0, rng).tolist() == list(range(10))
