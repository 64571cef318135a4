"""Writing one shard: read, resize and encode its images into a WebDataset tar, atomically.

This is the unit of work of `ganpaint shards` (one task per shard, run in a worker process). The
tar is byte-for-byte reproducible: samples in input order, members sorted per sample, every mtime
zero, so re-packing the same inputs gives the same sha256.

One input never stops a pack: an image that cannot be read, decoded, resized or encoded is skipped
with its reason (recorded in the manifest). Only a failure to write the shard itself (a full disk)
stops it.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import types
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ganpaint.data.sources import ImageReader, Item, SkipImage, reason
from ganpaint.files import file_sha256, write_text_atomically

MANIFEST = "manifest.json"  # written last: a shard directory is complete once it holds one
STATE_DIR = ".packing"  # unfinished tars and per-shard records, removed with the manifest written
# Longest side a packed image may have: WebP's limit (JPEG's is 65500), the same for every format
# so that --format never changes what is stored. --size is at most this.
MAX_SIDE = 16383


@dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to write one shard; `plan` fingerprints it for resuming."""

    name: str  # e.g. "train-000003.tar"
    split: str
    items: tuple[Item, ...]
    output: str  # the shard directory
    size: int  # shortest side after resizing (px)
    image_format: str  # jpg | png | webp
    quality: int
    seed: int  # synthetic drawing seed
    plan: str  # sha256 of the parameters and items: a shard is reused only if this matches


def long_side_crop(height: int, width: int, size: int) -> tuple[int, int, int, int] | None:
    """(left, top, width, height) in source pixels of the centred part of a height x width image
    whose long side, scaled with the shortest side to `size`, fits MAX_SIDE; None if all of it does.

    --size is the shortest side whatever the aspect ratio (training crops squares of it), so a
    panorama or a 20000 x 2 strip keeps its middle rather than shrinking to a sliver.
    """
    shortest, longest = min(height, width), max(height, width)
    scale = size / shortest
    if round(longest * scale) <= MAX_SIDE:
        return None
    kept = max(shortest, int(MAX_SIDE / scale))  # source pixels along the long side
    if width >= height:
        return (width - kept) // 2, 0, kept, height
    return 0, (height - kept) // 2, width, kept


def resize_shortest(image: np.ndarray, size: int) -> np.ndarray:
    """Scale [H, W, 3] so its shortest side is `size`, aspect kept; a long side that would exceed
    MAX_SIDE is first cropped to its centre (long_side_crop), so no image is too long to encode.

    INTER_AREA when shrinking (no aliasing); INTER_CUBIC when enlarging, where INTER_AREA would
    fall back to nearest-neighbour-like blocks.
    """
    crop = long_side_crop(*image.shape[:2], size)
    if crop is not None:
        left, top, kept_width, kept_height = crop
        image = image[top : top + kept_height, left : left + kept_width]
    height, width = image.shape[:2]
    scale = size / min(height, width)
    if scale == 1:
        return image
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))  # (w, h)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, new_size, interpolation=interpolation)


def encode(image_rgb: np.ndarray, image_format: str, quality: int) -> bytes:
    """[H, W, 3] uint8 RGB -> jpg / png / webp bytes."""
    options = {
        "jpg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
    }[image_format]
    ok, data = cv2.imencode("." + image_format, cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), options)
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {image_format} image")
    return data.tobytes()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One tar member with fixed metadata (mtime 0, read-only), so identical input gives identical
    bytes. Written with tarfile, not webdataset's writer, to keep torch out of packing processes."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o444, 0
    info.uname = info.gname = "ganpaint"
    tar.addfile(info, io.BytesIO(data))


def write_json(path: Path, value: dict) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    write_text_atomically(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def _prepared(item: Item, reader: ImageReader, task: ShardTask) -> tuple[bytes, dict, np.ndarray]:
    """(encoded image, its json record, its mean RGB in [0, 1]) of one item; SkipImage with the
    reason when it cannot be read, resized or encoded."""
    original = reader(item)
    try:
        image = resize_shortest(original, task.size)
        encoded = encode(image, task.image_format, task.quality)
    except Exception as error:  # OpenCV raises cv2.error, RuntimeError, MemoryError: skip it
        raise SkipImage(reason("cannot encode", error)) from None
    meta = {
        "source": item.origin,
        "original_size": list(original.shape[1::-1]),
        "size": list(image.shape[1::-1]),
    }
    crop = long_side_crop(*original.shape[:2], task.size)
    if crop is not None:  # only then: the records of every other image stay byte-identical
        meta["crop"] = list(crop)
    if item.captions:
        meta["captions"] = list(item.captions)
    return encoded, meta, np.asarray(cv2.mean(image)[:3]) / 255.0


def pack_shard(task: ShardTask) -> dict:
    """Write the task's tar and its record; return the record.

    Record: name, split, count, bytes, sha256, mean_rgb (mean of per-image means, RGB in [0, 1]),
    captioned (images packed with captions), plan, and skipped ({"path", "reason", "split",
    "shard"} for images that could not be read, decoded, resized or encoded).
    """
    output = Path(task.output)
    temporary = output / STATE_DIR / f"{task.name}.tmp-{os.getpid()}"
    reader = ImageReader(task.size, task.seed)
    skipped, colour_sum, count, captioned = [], np.zeros(3), 0, 0
    try:
        with tarfile.open(temporary, "w", format=tarfile.USTAR_FORMAT) as tar:
            for item in task.items:
                try:
                    encoded, meta, mean_rgb = _prepared(item, reader, task)
                except SkipImage as why:
                    where = {"split": task.split, "shard": task.name}
                    skipped.append({"path": item.origin, "reason": str(why), **where})
                    continue
                # WebDataset groups members by the name before the first dot: the sample key.
                add_member(tar, f"{item.key}.{task.image_format}", encoded)
                add_member(tar, f"{item.key}.json", json.dumps(meta, sort_keys=True).encode())
                colour_sum += mean_rgb
                count += 1
                captioned += bool(item.captions)
                _packed.value += 1  # one writer per process, read for progress only: no lock
        os.replace(temporary, output / task.name)
    finally:
        reader.close()
        temporary.unlink(missing_ok=True)
    path = output / task.name
    record = {
        "name": task.name,
        "split": task.split,
        "count": count,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "mean_rgb": (colour_sum / max(count, 1)).tolist(),
        "captioned": captioned,
        "plan": task.plan,
        "skipped": skipped,
    }
    write_json(output / STATE_DIR / f"{task.name}.json", record)
    return record


# Images packed so far by this process tree: a shared counter in packing processes (set by
# init_worker), a plain one in the main process; the progress bar reads it.
_packed = types.SimpleNamespace(value=0)


def init_worker(counter=None) -> None:
    """One OpenCV thread per packing process (the processes already fill the cores), and the
    shared count of packed images."""
    global _packed
    cv2.setNumThreads(1)
    if counter is not None:
        _packed = counter
