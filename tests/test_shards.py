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
import warnings
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


# --- one input never aborts a pack --------------------------------------------------------------


def make_odd_folder(root: Path) -> Path:
    """Good images plus one of each odd input: a name that is not UTF-8 (an image and a text
    file), a 20000 x 2 strip, a 2 x 20000 one, and data that does not decode."""
    for n in range(6):
        write_image(root / f"good{n}.png", (30 * n, 90, 160), size=(24, 20))
    write_image(Path(os.fsdecode(str(root).encode() + b"/latin\xff\xfe.png")), (9, 9, 9))
    Path(os.fsdecode(str(root).encode() + b"/notes\xe9.txt")).write_text("x")
    Image.fromarray(np.full((2, 20000, 3), 200, np.uint8)).save(root / "wide.png")
    Image.fromarray(np.full((20000, 2, 3), 100, np.uint8)).save(root / "tall.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def test_odd_inputs_are_packed_or_skipped_never_abort(tmp_path, capsys):
    root = make_odd_folder(tmp_path / "odd")
    out = tmp_path / "out"
    arguments = ["shards", "--source", "folder", "--input", str(root), "--output", str(out)]
    code = cli.main([*arguments, "--size", "64", "--workers", "1", "--split-max-count", "3"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    printed.out.encode("utf-8")  # the summary names the odd file in printable form
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(counts(manifest).values()) == 9
    reasons = {entry["path"].rsplit("/", 1)[-1]: entry["reason"] for entry in manifest["skipped"]}
    assert sorted(reasons) == ["broken.png", "notes\\xe9.txt"]
    assert reasons["broken.png"].startswith("cannot decode (") and len(reasons["broken.png"]) < 300
    metas = {}
    for path in out.glob("*.tar"):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    metas[meta["source"].rsplit("/", 1)[-1]] = meta
    assert "latin\\xff\\xfe.png" in metas  # recorded with its bytes escaped: valid UTF-8
    from ganpaint.data.packing import MAX_SIDE

    wide, tall = metas["wide.png"], metas["tall.png"]
    assert wide["size"][1] == 64 and 16000 < wide["size"][0] <= MAX_SIDE
    assert tall["size"][0] == 64 and 16000 < tall["size"][1] <= MAX_SIDE
    assert wide["crop"] == [9744, 0, 511, 2] and "crop" not in metas["good0.png"]


def test_two_workers_merge_the_skipped_lists(tmp_path):
    root = make_odd_folder(tmp_path / "odd")
    (root / "more").mkdir()
    (root / "more" / "broken2.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    options = dict(input=root, size=16, split_max_count=2, val_fraction=0.2, progress=False)
    serial = pack("folder", tmp_path / "serial", workers=1, **options)
    parallel = pack("folder", tmp_path / "parallel", workers=2, **options)
    assert parallel == serial
    shards_with_skips = {entry.get("shard") for entry in parallel["skipped"]} - {None}
    assert len(shards_with_skips) == 2  # both broken images, each from its own shard
    assert len(parallel["skipped"]) == 3


def test_an_image_that_cannot_be_encoded_is_skipped(tmp_path, monkeypatch):
    from ganpaint.data import packing

    real_encode = packing.encode

    def failing(image, image_format, quality):
        if image.mean() > 100:  # the bright images: as OpenCV does for a size it cannot store
            raise RuntimeError(f"OpenCV could not encode a {image_format} image")
        return real_encode(image, image_format, quality)

    monkeypatch.setattr(packing, "encode", failing)
    root = tmp_path / "in"
    for n in range(5):
        write_image(root / f"image{n}.png", (60 * n,) * 3)
    manifest = pack("folder", tmp_path / "out", input=root, size=16, workers=1, progress=False)
    assert sum(counts(manifest).values()) == 2
    assert {entry["reason"] for entry in manifest["skipped"]} == {
        "cannot encode (RuntimeError: OpenCV could not encode a jpg image)"
    }


def test_size_above_the_longest_storable_side_is_refused(tmp_path):
    with pytest.raises(UserError, match=r"--size 20000: expected 8\.\.16383 px"):
        pack("synthetic", tmp_path / "out", size=20000, count=4, workers=1, progress=False)


# --- a manifest's numbers are bounded ---------------------------------------------------------


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small") / "shards"
    pack("synthetic", out, size=64, count=40, split_max_count=20, workers=1, progress=False)
    return out


def edited_copy(source: Path, target: Path, edit) -> Path:
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    edit(manifest)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def small_data(shards: Path) -> DataConfig:
    return DataConfig(
        shards=str(shards), image_px=32, resize_min_px=32, resize_max_px=40, workers=0,
        shuffle_buffer=16,
    )  # fmt: skip


def first_batch(shards: Path) -> torch.Tensor:
    return next(iter(train_loader(small_data(shards), 4, 0, 1, 0, 0)))


def set_key(dotted: str, value):
    def edit(manifest: dict) -> None:
        *parents, last = dotted.split(".")
        node = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return edit


MANIFEST_CASES = {
    # case -> (edit, the key the one line names)
    "count 10**12": (
        set_key("splits.train.shards.0.count", 10**12),
        "splits.train.shards[0].count",
    ),
    "count 10**19": (
        set_key("splits.train.shards.0.count", 10**19),
        "splits.train.shards[0].count",
    ),
    "count 10**8": (set_key("splits.train.shards.0.count", 10**8), "splits.train.shards[0].count"),
    "split count": (set_key("splits.train.count", 7), "'splits.train.count' is 7, but its shards"),
    "split bytes": (set_key("splits.val.bytes", 5), "'splits.val.bytes' is 5"),
    "size 10**30": (set_key("parameters.size", 10**30), "'parameters.size' 1000000000000"),
    "size 1e30": (set_key("parameters.size", 1e30), "'parameters.size' 1e+30"),
    "size 4": (set_key("parameters.size", 4), "'parameters.size' 4 is not a size in 8..16383"),
    "1 MB shard name": (set_key("splits.train.shards.0.name", "x" * 10**6), "refused shard name"),
    "1 MB split name": (
        lambda manifest: manifest["splits"].update({"y" * 10**6: {}}),
        "unknown split 'yyyy",
    ),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_manifest_numbers_and_strings_are_bounded(small_shards, tmp_path, case):
    edit, expected = MANIFEST_CASES[case]
    shards = edited_copy(small_shards, tmp_path / "shards", edit)
    started = time.perf_counter()
    with pytest.raises(UserError) as caught:
        first_batch(shards)
    message = str(caught.value)
    assert time.perf_counter() - started < 2
    assert "\n" not in message and len(message) <= 400, message[:500]
    assert str(shards / "manifest.json") in message and expected in message, message


def test_counts_edited_with_their_bytes_are_bounded_by_the_files(small_shards, tmp_path):
    def forge(manifest: dict) -> None:
        train = manifest["splits"]["train"]
        train["shards"][0].update(count=10**12, bytes=10**16)
        train["count"] = sum(shard["count"] for shard in train["shards"])
        train["bytes"] = sum(shard["bytes"] for shard in train["shards"])

    shards = edited_copy(small_shards, tmp_path / "shards", forge)
    with pytest.warns(UserWarning, match="lists 1000000000000 samples, but its .* hold at most"):
        batch = first_batch(shards)
    assert batch.shape == (4, 3, 32, 32)


def test_decoding_does_not_follow_the_manifest_size(small_shards, tmp_path):
    honest = first_batch(small_shards)
    for size in (8, 16383):  # in range, but not what the shards hold (64)
        shards = edited_copy(
            small_shards, tmp_path / f"size{size}", set_key("parameters.size", size)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "packed at 8 px are enlarged": informational
            assert torch.equal(first_batch(shards), honest)


def test_damaged_pack_state_is_refused_in_one_line_not_a_traceback(tmp_path):
    out = tmp_path / "shards"
    (out / ".packing").mkdir(parents=True)
    (out / ".packing" / "parameters.json").write_text("{damaged")
    with pytest.raises(UserError, match=r"holds other files \(\.packing\); pass --overwrite"):
        pack("synthetic", out, size=16, count=8, workers=1, progress=False)
    manifest = pack("synthetic", out, size=16, count=8, workers=1, progress=False, overwrite=True)
    assert sum(counts(manifest).values()) == 8
