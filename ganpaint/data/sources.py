"""Input sources for packing: which images a celeba / coco / folder / synthetic input holds, per split.

`enumerate_inputs` lists every input in a deterministic order (sorted relative paths) and assigns
it to a split; an `ImageReader` reads them as 8-bit RGB (any bit depth and mode: see
ganpaint/data/pixels.py). Files that cannot be images are reported as skipped here; files that fail
to decode are reported by the packer.

File names are bytes on POSIX: a name that is not UTF-8 (Python holds its bad bytes as surrogates)
is hashed and keyed by its own bytes and recorded with them escaped (`bad\\xff.png`), so it packs
like any other file and the manifest stays valid UTF-8.

COCO's captions (annotations/captions_{train,val}2017.json, when present) travel with its items.

Splits: CelebA follows `list_eval_partition.txt` (0 train, 1 val, 2 test); COCO maps `train2017/`
to train and `val2017/` to val (no test); a folder whose top level holds only `train/`, `val/`
and `test/` subfolders is split by them; any other folder, or a CelebA without its partition file,
is split by a hash of each relative path: `val_fraction` of the images go to val and as many to test; the
synthetic set is split by index (the last `val_fraction` to test, the `val_fraction` before to val).
"""

from __future__ import annotations

import hashlib
import re
import warnings
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from ganpaint.data import synthetic
from ganpaint.data.captions import read_coco_captions
from ganpaint.data.pixels import to_rgb8
from ganpaint.errors import UserError

SOURCES = ("celeba", "coco", "folder", "synthetic")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
CELEBA_PARTITION = {"0": "train", "1": "val", "2": "test"}
MAX_KEY_CHARS = 80  # a key plus its extension must fit a 100-byte tar name
MAX_REASON_CHARS = 240  # a skip reason quotes a library's message, which can be any length


def name_bytes(text: str) -> bytes:
    """A path's own bytes: UTF-8, with the undecodable bytes Python keeps as surrogates restored."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no undecodable byte made: keep it as UTF-8 would
        return text.encode("utf-8", "surrogatepass")


def printable(text: str, limit: int = 0) -> str:
    """`text` as one printable line: undecodable bytes as \\xNN, control characters escaped;
    cut to `limit` characters (0: no limit), so a recorded name or reason is always valid UTF-8."""
    decoded = name_bytes(text).decode("utf-8", "backslashreplace")
    shown = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in decoded)
    if limit and len(shown) > limit:
        return shown[: limit - 3] + "..."
    return shown


class Item(NamedTuple):
    """One input image. `key` is its WebDataset key: unique in the split, no dots."""

    key: str
    path: str  # file, or the zip holding `member`; "" for synthetic images
    member: str = ""  # name inside a zip archive
    index: int = -1  # synthetic image number
    captions: tuple[str, ...] = ()  # coco: the image's captions, stored in its shard sample

    @property
    def origin(self) -> str:
        """Where the image came from, as recorded in its shard sample and in the skipped list."""
        if self.index >= 0:
            return f"synthetic:{self.index}"
        return printable(f"{self.path}:{self.member}" if self.member else self.path)


class Inputs(NamedTuple):
    splits: dict[str, list[Item]]  # split name -> items in packing order
    skipped: list[dict]  # {"path", "reason"} for inputs that are not images at all
    annotations: tuple[str, ...] = ()  # caption annotation files read (coco)


class SkipImage(Exception):
    """An input that is listed but cannot be used; the message is the reason recorded."""


class ImageReader:
    """Reads items as [H, W, 3] uint8 RGB, keeping zip archives open across the items of a task."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed  # synthetic items are drawn at `size` from `seed`
        self.archives: dict[str, zipfile.ZipFile] = {}

    def __call__(self, item: Item) -> np.ndarray:
        """The item's pixels; raises SkipImage with the reason when they cannot be read."""
        if item.index >= 0:
            return synthetic.draw(item.index, self.seed, self.size)
        try:
            if item.member:
                if item.path not in self.archives:
                    self.archives[item.path] = zipfile.ZipFile(item.path)
                with self.archives[item.path].open(item.member) as stream:
                    return _to_rgb(Image.open(stream))
            with Image.open(item.path) as image:
                return _to_rgb(image)
        except Exception as error:  # PIL, zlib and the OS raise many types: all mean "skip it"
            # Truncated or garbled data, unknown formats and unreadable files all land here; PIL
            # raises for a truncated JPEG where OpenCV would silently return a grey-padded image.
            raise SkipImage(reason("cannot decode", error)) from None

    def close(self) -> None:
        for archive in self.archives.values():
            archive.close()
        self.archives.clear()


def reason(what: str, error: Exception) -> str:
    """A skip reason quoting the error, one printable line of at most MAX_REASON_CHARS."""
    return printable(f"{what} ({type(error).__name__}: {error})", MAX_REASON_CHARS)


def _to_rgb(image: Image.Image) -> np.ndarray:
    # Phone photos store their rotation in EXIF; apply it so the packed image is upright.
    return to_rgb8(ImageOps.exif_transpose(image))


def _key(relative: str, used: set[str]) -> str:
    """A WebDataset key from a relative path: extension dropped, dots and slashes made safe."""
    stem = relative.rsplit(".", 1)[0] if "." in Path(relative).name else relative
    key = re.sub(r"[^A-Za-z0-9_-]", "_", stem).strip("_") or "image"
    if len(key) > MAX_KEY_CHARS:  # tar names are limited to 100 bytes: keep the end, add a hash
        key = key[-(MAX_KEY_CHARS - 13) :] + "_" + hashlib.sha256(name_bytes(stem)).hexdigest()[:12]
    unique, suffix = key, 1
    while unique in used:
        unique, suffix = f"{key}_{suffix}", suffix + 1
    used.add(unique)
    return unique


def hash_split(relative: str, val_fraction: float) -> str:
    """Deterministic split of a relative path: val_fraction to val, as much to test, rest train."""
    fraction = _hash_fraction(relative)
    if fraction < val_fraction:
        return "val"
    return "test" if fraction < 2 * val_fraction else "train"


def _hash_fraction(text: str) -> float:
    return int(hashlib.sha256(name_bytes(text)).hexdigest()[:12], 16) / 16**12


def top_up_held_out(splits: dict[str, list[Item]], val_fraction: float) -> None:
    """Give val and test at least round(val_fraction * images) each (at least one, from 3 images
    on), taking train images in a fixed order, so a small folder never packs an empty val split.

    The hash split is kept for everything it already holds out: adding images to a folder never
    moves an image out of val or test.
    """
    total = sum(len(items) for items in splits.values())
    want = max(1, round(total * val_fraction)) if total >= 3 else 0
    for split in ("val", "test"):
        short = want - len(splits[split])
        if short <= 0:
            continue
        order = sorted(
            range(len(splits["train"])), key=lambda i: _hash_fraction(splits["train"][i].key)
        )
        moved = set(order[:short])
        splits[split] += [splits["train"][i] for i in sorted(moved)]
        splits["train"] = [item for i, item in enumerate(splits["train"]) if i not in moved]


def _files(root: Path) -> list[tuple[str, Path]]:
    """All regular files under root as (relative posix path, path), sorted by relative path."""
    found = [
        (path.relative_to(root).as_posix(), path) for path in root.rglob("*") if _is_file(path)
    ]
    return sorted(found)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # cannot even stat it: listed, so the reader records why it cannot be read
        return True


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _split_files(files, assign, skipped: list[dict]) -> dict[str, list[Item]]:
    """Items per split from (relative path, (file,) or (zip, member)) pairs.

    assign(relative) -> split name, or None for a file the partition does not list.
    """
    splits: dict[str, list[Item]] = {name: [] for name in SPLITS}
    used: dict[str, set[str]] = {name: set() for name in SPLITS}
    for relative, where in files:
        shown = printable(":".join(where))
        if not _is_image_name(relative):
            skipped.append({"path": shown, "reason": "not an image file (by extension)"})
            continue
        split = assign(relative)
        if split is None:
            skipped.append({"path": shown, "reason": "not listed in the partition file"})
            continue
        splits[split].append(Item(_key(relative, used[split]), *where))
    return splits


def _celeba(root: Path, val_fraction: float) -> Inputs:
    images_dir, archive = root / "img_align_celeba", root / "img_align_celeba.zip"
    if (images_dir / "img_align_celeba").is_dir():  # the Kaggle copy nests the folder once more
        images_dir = images_dir / "img_align_celeba"
    if images_dir.is_dir():
        files = [(relative, (str(path),)) for relative, path in _files(images_dir)]
    elif archive.is_file():
        files = _zip_members(archive)
    else:
        raise UserError(
            f"celeba input {root}: expected img_align_celeba/ or img_align_celeba.zip "
            "(plus list_eval_partition.txt) in it"
        )
    partition = _celeba_partition(root)
    if partition is None:
        warnings.warn(
            f"celeba input {root}: no list_eval_partition.txt; splitting by a hash of "
            f"file names (val and test {val_fraction:.0%} each)",
            stacklevel=3,
        )

        def assign(relative: str) -> str:
            return hash_split(Path(relative).name, val_fraction)
    else:
        missing = len(partition.keys() - {Path(relative).name for relative, _ in files})
        if missing:
            warnings.warn(
                f"celeba input {root}: {missing} images listed in the partition file are missing",
                stacklevel=3,
            )

        def assign(relative: str) -> str | None:
            return partition.get(Path(relative).name)

    skipped: list[dict] = []
    splits = _split_files(files, assign, skipped)
    return Inputs(splits, skipped)


def _zip_members(archive: Path) -> list[tuple[str, tuple[str, str]]]:
    try:
        with zipfile.ZipFile(archive) as opened:
            names = sorted(name for name in opened.namelist() if not name.endswith("/"))
    except (OSError, zipfile.BadZipFile) as error:
        raise UserError(f"{archive}: not a readable zip archive ({error})") from None
    return [(Path(name).name, (str(archive), name)) for name in names]


def _celeba_partition(root: Path) -> dict[str, str] | None:
    """{"000001.jpg": "train", ...} from list_eval_partition.txt (or Kaggle's .csv), or None."""
    for name in ("list_eval_partition.txt", "list_eval_partition.csv"):
        path = root / name
        if not path.is_file():
            continue
        partition = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            fields = line.replace(",", " ").split()
            if not fields or fields == ["image_id", "partition"]:
                continue
            if len(fields) != 2 or fields[1] not in CELEBA_PARTITION:
                raise UserError(f"{path}:{number}: expected 'NAME.jpg 0|1|2', got {line.strip()!r}")
            partition[fields[0]] = CELEBA_PARTITION[fields[1]]
        return partition
    return None


def _coco(root: Path) -> Inputs:
    folders = {"train": root / "train2017", "val": root / "val2017"}
    if not any(folder.is_dir() for folder in folders.values()):
        raise UserError(f"coco input {root}: expected train2017/ and/or val2017/ in it")
    skipped: list[dict] = []
    splits = {name: [] for name in SPLITS}
    for split, folder in folders.items():
        if folder.is_dir():
            files = [(relative, (str(path),)) for relative, path in _files(folder)]
            splits[split] = _split_files(files, lambda _, s=split: s, skipped)[split]
    captions, annotations = read_coco_captions(root)
    for split, by_name in captions.items():
        splits[split] = [
            item._replace(captions=tuple(by_name.get(Path(item.path).name, ())))
            for item in splits[split]
        ]
    return Inputs(splits, skipped, tuple(annotations))


def _folder(root: Path, val_fraction: float) -> Inputs:
    files = [(relative, (str(path),)) for relative, path in _files(root)]
    if not files:
        raise UserError(
            f"folder input {root} holds no files; expected images "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}) anywhere under it"
        )
    skipped: list[dict] = []
    tops = {relative.split("/", 1)[0] for relative, _ in files}
    if all("/" in relative for relative, _ in files) and tops <= set(SPLITS):
        # The user chose the split (e.g. whole photos held out): train/, val/, test/ subfolders.
        splits = _split_files(files, lambda relative: relative.split("/", 1)[0], skipped)
        return Inputs(splits, skipped)
    splits = _split_files(files, lambda relative: hash_split(relative, val_fraction), skipped)
    top_up_held_out(splits, val_fraction)
    return Inputs(splits, skipped)


def _synthetic(count: int, val_fraction: float) -> Inputs:
    held_out = int(round(count * val_fraction))
    bounds = {
        "train": (0, count - 2 * held_out),
        "val": (count - 2 * held_out, count - held_out),
        "test": (count - held_out, count),
    }
    splits = {
        split: [Item(f"{index:08d}", "", index=index) for index in range(*bounds[split])]
        for split in SPLITS
    }
    return Inputs(splits, [])


def enumerate_inputs(
    source: str, input: str | Path | None, count: int, val_fraction: float
) -> Inputs:
    """Every input of `source`, split and in packing order. UserError (one line) for a bad layout."""
    if source not in SOURCES:
        raise UserError(f"--source {source!r}: expected one of {', '.join(SOURCES)}")
    if source == "synthetic":
        return _synthetic(count, val_fraction)
    if input is None:
        raise UserError(f"--input is required for --source {source} (the dataset root)")
    root = Path(input).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"--input {root}: not a directory")
    if source == "celeba":
        inputs = _celeba(root, val_fraction)
    elif source == "coco":
        inputs = _coco(root)
    else:
        inputs = _folder(root, val_fraction)
    if not any(inputs.splits.values()):
        raise UserError(
            f"{source} input {root}: no image files found "
            f"({len(inputs.skipped)} other files skipped)"
        )
    return inputs
