"""Packing: real dataset layouts (CelebA dir and zip, COCO, a folder tree, synthetic) into real tar
shards; counts, skipped inputs, checksums, mean colour, resume, refusal and the CLI error line."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ganpaint import cli
from ganpaint.config import DataConfig
from ganpaint.data import synthetic
from ganpaint.data.shards import pack
from ganpaint.data.stream import read_manifest, train_loader, val_batch
from ganpaint.errors import UserError


def write_image(path: Path, colour, size=(24, 20), noisy=False) -> None:
    """A solid-colour (or noisy) RGB image of size (width, height), format from the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.empty((size[1], size[0], 3), np.uint8)
    pixels[:] = colour
    if noisy:
        pixels = np.random.default_rng(0).integers(0, 256, pixels.shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=100)  # quality applies to JPEG only


def write_truncated_jpeg(path: Path) -> None:
    write_image(path, (0, 0, 0), size=(64, 64), noisy=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def tar_images(path: Path) -> dict[str, np.ndarray]:
    """{key: RGB image} of a shard, decoded independently of the project's readers."""
    images = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, extension = member.name.split(".", 1)
            if extension != "json":
                data = np.frombuffer(tar.extractfile(member).read(), np.uint8)
                images[key] = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return images


def counts(manifest: dict) -> dict[str, int]:
    return {split: entry["count"] for split, entry in manifest["splits"].items()}


def skipped_names(manifest: dict) -> set[str]:
    return {Path(entry["path"].split(":")[-1]).name for entry in manifest["skipped"]}


# CelebA: 10 good images, one truncated JPEG listed in the partition, one text file.
CELEBA_COLOURS = {f"{n:06d}.jpg": (20 * n, 200 - 10 * n, 100) for n in range(1, 11)}
CELEBA_PARTITION = {
    **{f"{n:06d}.jpg": 0 for n in range(1, 7)},
    "000007.jpg": 1,
    "000008.jpg": 1,
    "000009.jpg": 2,
    "000010.jpg": 2,
    "000011.jpg": 0,
    "000012.jpg": 2,  # listed but not downloaded
}


def make_celeba(root: Path, as_zip: bool = False, partition: bool = True) -> Path:
    images = root / "img_align_celeba"
    for name, colour in CELEBA_COLOURS.items():
        write_image(images / name, colour, size=(36, 44))
    write_truncated_jpeg(images / "000011.jpg")
    (images / "notes.txt").write_text("not an image")
    if partition:
        (root / "list_eval_partition.txt").write_text(
            "".join(f"{name} {split}\n" for name, split in CELEBA_PARTITION.items())
        )
    if as_zip:
        with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as archive:
            for path in sorted(images.iterdir()):
                archive.write(path, f"img_align_celeba/{path.name}")
        shutil.rmtree(images)
    return root


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_celeba_splits_skips_checksums_and_mean(tmp_path, as_zip):
    root = make_celeba(tmp_path / "celeba", as_zip=as_zip)
    out = tmp_path / "shards"
    with pytest.warns(UserWarning, match="1 images listed in the partition file are missing"):
        manifest = pack(
            "celeba",
            out,
            input=root,
            size=32,
            split_max_count=4,
            image_format="png",
            workers=1,
            progress=False,
        )
    assert counts(manifest) == {"train": 6, "val": 2, "test": 2}
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [4, 2]
    assert skipped_names(manifest) == {"000011.jpg", "notes.txt"}
    reasons = {Path(e["path"].split(":")[-1]).name: e["reason"] for e in manifest["skipped"]}
    assert "truncated" in reasons["000011.jpg"] and "not an image" in reasons["notes.txt"]
    for entry in manifest["splits"].values():
        for shard in entry["shards"]:
            data = (out / shard["name"]).read_bytes()
            assert shard["sha256"] == hashlib.sha256(data).hexdigest()
            assert shard["bytes"] == len(data)
    # The hole fill is the mean over train images: solid colours, so known exactly (PNG output).
    expected = np.mean([CELEBA_COLOURS[f"{n:06d}.jpg"] for n in range(1, 7)], axis=0) / 255
    assert np.allclose(manifest["mean_rgb"], expected, atol=2 / 255)
    images = tar_images(out / "val-000000.tar")
    assert sorted(images) == ["000007", "000008"]
    assert images["000007"].shape == (39, 32, 3)  # 36x44 -> shortest side 32, aspect kept
    assert np.abs(images["000007"].astype(int) - CELEBA_COLOURS["000007.jpg"]).max() <= 2


def test_celeba_without_partition_file_warns_and_hash_splits(tmp_path):
    root = make_celeba(tmp_path / "celeba", partition=False)
    with pytest.warns(UserWarning, match="list_eval_partition"):
        manifest = pack(
            "celeba",
            tmp_path / "out",
            input=root,
            size=32,
            val_fraction=0.2,
            workers=1,
            progress=False,
        )
    assert sum(counts(manifest).values()) == 10
    assert skipped_names(manifest) == {"000011.jpg", "notes.txt"}


def test_coco_layout_keeps_aspect_and_records_sizes(tmp_path):
    root = tmp_path / "coco"
    for n in range(5):
        write_image(root / "train2017" / f"{n:012d}.jpg", (10 * n, 50, 90), size=(80, 60))
    for n in range(3):
        write_image(root / "val2017" / f"{100 + n:012d}.jpg", (200, 10 * n, 30), size=(60, 90))
    (root / "train2017" / "readme.md").write_text("hello")
    out = tmp_path / "shards"
    manifest = pack("coco", out, input=root, size=32, workers=1, progress=False)
    assert counts(manifest) == {"train": 5, "val": 3, "test": 0}
    assert skipped_names(manifest) == {"readme.md"}
    with tarfile.open(out / "train-000000.tar") as tar:
        meta = json.loads(tar.extractfile("000000000000.json").read())
    assert meta["original_size"] == [80, 60] and meta["size"] == [43, 32]
    assert meta["source"].endswith("train2017/000000000000.jpg")
    assert tar_images(out / "val-000000.tar")["000000000100"].shape == (48, 32, 3)


def make_folder(root: Path, count: int = 30) -> Path:
    for n in range(count):
        write_image(root / f"group{n % 3}" / f"deep{n % 2}" / f"img.{n}.png", (n * 8, 100, 50))
    (root / "group0" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "list.csv").write_text("a,b\n")
    return root


def test_folder_hash_split_is_stable_and_reproducible(tmp_path):
    root = make_folder(tmp_path / "tree")
    first = pack(
        "folder", tmp_path / "a", input=root, size=16, val_fraction=0.2, workers=1, progress=False
    )
    again = pack(
        "folder", tmp_path / "b", input=root, size=16, val_fraction=0.2, workers=1, progress=False
    )
    assert sum(counts(first).values()) == 30
    assert skipped_names(first) == {"broken.jpg", "list.csv"}
    assert first == again  # same inputs, same bytes: the manifest holds no time or output path

    def split_of(manifest: dict, out: Path) -> dict[str, str]:
        return {
            key: split
            for split, entry in manifest["splits"].items()
            for shard in entry["shards"]
            for key in tar_images(out / shard["name"])
        }

    full = split_of(first, tmp_path / "a")
    assert len(full) == 30 and set(full.values()) == {"train", "val", "test"}
    # Removing images never moves the others to another split.
    for n in range(0, 30, 2):
        (root / f"group{n % 3}" / f"deep{n % 2}" / f"img.{n}.png").unlink()
    smaller = pack(
        "folder", tmp_path / "c", input=root, size=16, val_fraction=0.2, workers=1, progress=False
    )
    assert all(full[key] == split for key, split in split_of(smaller, tmp_path / "c").items())


def test_synthetic_is_deterministic_by_seed_and_index():
    assert np.array_equal(synthetic.draw(7, 0, 64), synthetic.draw(7, 0, 64))
    assert not np.array_equal(synthetic.draw(7, 0, 64), synthetic.draw(7, 1, 64))
    assert not np.array_equal(synthetic.draw(7, 0, 64), synthetic.draw(8, 0, 64))
    assert synthetic.draw(3, 0, 48).shape == (48, 48, 3)


def test_parallel_packing_gives_the_same_shards(tmp_path):
    serial = pack(
        "synthetic",
        tmp_path / "serial",
        size=32,
        count=48,
        split_max_count=8,
        workers=1,
        progress=False,
    )
    parallel = pack(
        "synthetic",
        tmp_path / "parallel",
        size=32,
        count=48,
        split_max_count=8,
        workers=2,
        progress=False,
    )
    assert serial == parallel
    assert counts(serial) == {"train": 44, "val": 2, "test": 2}


def test_rerun_reuses_verified_shards_and_repacks_a_damaged_one(tmp_path, capsys):
    out = tmp_path / "shards"
    options = dict(size=32, count=64, split_max_count=16, val_fraction=0.125, workers=1)
    manifest = pack("synthetic", out, progress=False, **options)
    stamps = {path.name: path.stat().st_mtime_ns for path in out.glob("*.tar")}
    assert pack("synthetic", out, progress=True, **options) == manifest
    assert "reusing 5 of 5 shards" in capsys.readouterr().out
    assert {path.name: path.stat().st_mtime_ns for path in out.glob("*.tar")} == stamps
    damaged = out / "train-000001.tar"
    data = bytearray(damaged.read_bytes())
    data[700] ^= 0xFF
    damaged.write_bytes(bytes(data))
    assert pack("synthetic", out, progress=False, **options) == manifest  # rebuilt byte-identical
    changed = {name for name, stamp in stamps.items() if (out / name).stat().st_mtime_ns != stamp}
    assert changed == {"train-000001.tar"}
    assert sorted(os.listdir(out)) == sorted([*stamps, "manifest.json"])  # no state left behind


def test_interrupted_pack_resumes_from_finished_shards(tmp_path):
    out, options = tmp_path / "shards", dict(size=128, count=600, split_max_count=20, workers=1)
    code = (
        f"from ganpaint.data.shards import pack; pack('synthetic', {str(out)!r}, "
        f"progress=False, **{options!r})"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    records = out / ".packing"
    deadline = time.monotonic() + 60
    while len(list(records.glob("*.tar.json"))) < 3 and time.monotonic() < deadline:
        assert child.poll() is None, "the pack finished before it could be interrupted"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (out / "manifest.json").exists()
    finished = {
        path.name.removesuffix(".json"): (out / path.name.removesuffix(".json")).stat().st_mtime_ns
        for path in records.glob("*.tar.json")
    }
    assert len(finished) >= 3
    manifest = pack("synthetic", out, progress=False, **options)
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in finished.items())
    assert manifest == pack("synthetic", tmp_path / "straight", progress=False, **options)


def test_output_holding_something_else_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="other files .*--overwrite"):
        pack("synthetic", out, size=16, count=8, workers=1, progress=False)
    pack("synthetic", out, size=16, count=8, workers=1, progress=False, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"  # never deletes what it did not write
    with pytest.raises(UserError, match=r"other parameters \(size\)"):
        pack("synthetic", out, size=24, count=8, workers=1, progress=False)
    manifest = pack("synthetic", out, size=24, count=8, workers=1, progress=False, overwrite=True)
    assert manifest["parameters"]["size"] == 24
    assert tar_images(out / "train-000000.tar")["00000000"].shape == (24, 24, 3)


def test_bad_inputs_raise_one_line_user_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a.txt").write_text("x")
    bad = tmp_path / "bad_images"
    (bad / "x.jpg").parent.mkdir()
    (bad / "x.jpg").write_bytes(b"garbage")
    cases = [
        (dict(source="celeba", input=tmp_path / "empty"), "img_align_celeba"),
        (dict(source="coco", input=tmp_path / "empty"), "train2017"),
        (dict(source="folder", input=tmp_path / "only_text"), "no image files"),
        (dict(source="folder", input=bad), "no image could be packed"),
        (dict(source="folder", input=tmp_path / "missing"), "not a directory"),
        (dict(source="folder"), "--input is required"),
        (dict(source="synthetic", size=2), "--size"),
    ]
    for n, (arguments, message) in enumerate(cases):
        with pytest.raises(UserError, match=message) as caught:
            pack(output=tmp_path / f"out{n}", workers=1, progress=False, **arguments)
        assert "\n" not in str(caught.value)


def test_cli_prints_one_error_line_for_an_empty_input_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main(
        [
            "shards",
            "--source",
            "folder",
            "--input",
            str(tmp_path / "empty"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1 and error.startswith("ganpaint: error: folder input ")
    assert str(tmp_path / "empty") in error


def test_cli_packs_and_prints_a_summary(tmp_path, capsys):
    code = cli.main(
        [
            "shards",
            "--source",
            "synthetic",
            "--count",
            "20",
            "--size",
            "16",
            "--output",
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--format",
            "webp",
        ]
    )
    summary = capsys.readouterr().out
    assert code == 0 and "train" in summary and "skipped 0 inputs" in summary
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["image_key"] == "webp" and counts(manifest) == {
        "train": 18,
        "val": 1,
        "test": 1,
    }
    with tarfile.open(tmp_path / "out" / "val-000000.tar") as tar:
        assert Image.open(io.BytesIO(tar.extractfile("00000018.webp").read())).size == (16, 16)


def square_holes(count: int, image_px: int, generator: torch.Generator) -> torch.Tensor:
    """[count, 1, px, px] masks (1 = hole): one square per image, side 25-50% of the image."""
    masks = torch.zeros(count, 1, image_px, image_px)
    for mask in masks:
        side = int(torch.randint(image_px // 4, image_px // 2 + 1, (1,), generator=generator))
        left, top = torch.randint(0, image_px - side + 1, (2,), generator=generator).tolist()
        mask[:, top : top + side, left : left + side] = 1
    return masks


def hole_psnr(prediction: torch.Tensor, target: torch.Tensor, masks: torch.Tensor) -> float:
    error = ((prediction - target) ** 2 * masks).sum() / (masks.sum() * 3)
    return float(10 * torch.log10(1 / error))


@pytest.mark.slow
def test_synthetic_holes_are_learnable_beyond_the_mean_fill(tmp_path):
    """The embedded data's purpose: a small net beats the mean-colour fill by several dB within
    a few hundred CPU steps (holes of 25-50% of the side, 32-px crops from 64-px shards)."""
    pack("synthetic", tmp_path, size=64, count=800, split_max_count=200, workers=1, progress=False)
    data = DataConfig(
        shards=str(tmp_path),
        image_px=32,
        resize_min_px=32,
        resize_max_px=40,
        workers=0,
        shuffle_buffer=128,
    )
    mean_rgb = torch.tensor(read_manifest(tmp_path)["mean_rgb"]).view(1, 3, 1, 1)
    torch.manual_seed(0)
    width, layers = 16, []
    for in_channels, dilation in (
        (4, 1),
        (width, 1),
        (width, 2),
        (width, 4),
        (width, 8),
        (width, 1),
    ):
        layers += [
            nn.Conv2d(in_channels, width, 3, padding=dilation, dilation=dilation),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
    net = nn.Sequential(*layers, nn.Conv2d(width, 3, 3, padding=1), nn.Sigmoid())
    optimizer = torch.optim.Adam(net.parameters(), 2e-3)

    def complete(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return net(torch.cat([images * (1 - masks) + mean_rgb * masks, masks], 1))

    generator = torch.Generator().manual_seed(1)
    stream = iter(train_loader(data, 16, rank=0, world_size=1, seed=0, start_step=0))
    for _ in range(300):
        images = next(stream).float() / 255
        masks = square_holes(len(images), 32, generator)
        loss = ((complete(images, masks) - images) ** 2 * masks).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images = val_batch(data, 40).float() / 255
    masks = square_holes(len(images), 32, torch.Generator().manual_seed(2))
    net.eval()
    with torch.no_grad():
        learned = hole_psnr(complete(images, masks), images, masks)
    baseline = hole_psnr(mean_rgb.expand_as(images), images, masks)
    # Measured: 16.5 dB against 13.2 dB (+3.3); the margin leaves room for other torch builds.
    assert learned > baseline + 2.5, (learned, baseline)


def test_a_small_folder_always_gets_val_and_test_images(tmp_path):
    from ganpaint.data.sources import Item, hash_split, top_up_held_out

    names = [f"photo_{index:02d}.jpg" for index in range(60)]
    splits = {"train": [], "val": [], "test": []}
    for name in names:
        splits[hash_split(name, 0.05)].append(Item(name, name))
    before = {split: {item.key for item in items} for split, items in splits.items()}
    top_up_held_out(splits, 0.05)
    assert len(splits["val"]) >= 3 and len(splits["test"]) >= 3
    assert sum(len(items) for items in splits.values()) == 60
    # what the hash held out stays held out; only train images move
    for split in ("val", "test"):
        assert before[split] <= {item.key for item in splits[split]}
    moved = {item.key for item in splits["val"] + splits["test"]} - before["val"] - before["test"]
    assert moved <= before["train"]
