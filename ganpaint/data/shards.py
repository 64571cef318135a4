"""Packing a dataset into WebDataset tar shards + manifest.json: the `ganpaint shards` command.

Layout of an output directory:
    {train,val,test}-NNNNNN.tar   samples `__key__` + jpg|png|webp + json (source, sizes, and
                                  the image's captions where COCO has them)
    manifest.json                 source, parameters, per split: count, bytes and per shard
                                  (name, count, bytes, sha256, mean_rgb, captioned, plan); the
                                  train split's mean RGB in [0, 1] ("mean_rgb", GLCIC's hole
                                  fill); "skipped" inputs with their reasons; "captions" (when
                                  caption annotations were read): images with and without
                                  captions per split, the tokenizer file and its vocabulary size
    tokenizer.json                the word tokenizer of the train captions (captions only)
Shards are written in parallel (one task per shard), each to a temporary name and then renamed;
the manifest is written last. Re-running the same command resumes: a shard whose recorded sha256
still verifies and whose plan (parameters + inputs) matches is kept.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ganpaint.data.captions import caption_manifest
from ganpaint.data.pack_state import claim_output, remove_stale_shards, verified
from ganpaint.data.packing import (
    MANIFEST,
    MAX_SIDE,
    STATE_DIR,
    ShardTask,
    init_worker,
    pack_shard,
    write_json,
)
from ganpaint.data.remote import is_remote, mask
from ganpaint.data.sources import SOURCES, SPLITS, Inputs, Item, enumerate_inputs, printable
from ganpaint.errors import UserError

FORMAT = "ganpaint-shards/1"
IMAGE_FORMATS = ("jpg", "png", "webp")


def _parameters(
    source, input, size, split_max_count, image_format, quality, count, val_fraction, seed
):
    """The parameters that decide the shards' content (a resumed pack must match them)."""
    parameters = {
        "input": None if input is None else str(Path(input).expanduser().resolve()),
        "size": size,
        "split_max_count": split_max_count,
        "image_format": image_format,
        "quality": quality,
    }
    if source != "coco":  # coco's split is its folders; the others may split by fraction
        parameters["val_fraction"] = val_fraction
    if source == "synthetic":
        parameters.update(input=None, count=count, seed=seed)
    return parameters


def _check_arguments(
    source, size, split_max_count, workers, image_format, quality, count, val_fraction
):
    checks = [
        (source in SOURCES, f"--source {source!r}: expected one of {', '.join(SOURCES)}"),
        (8 <= size <= MAX_SIDE, f"--size {size}: expected 8..{MAX_SIDE} px"),
        (split_max_count >= 1, f"--split-max-count {split_max_count}: expected at least 1"),
        (workers >= 1, f"--workers {workers}: expected at least 1"),
        (image_format in IMAGE_FORMATS, f"--format {image_format!r}: expected jpg, png or webp"),
        (1 <= quality <= 100, f"--quality {quality}: expected 1..100"),
        (source != "synthetic" or count >= 1, f"--count {count}: expected at least 1"),
        (0 <= val_fraction < 0.5, f"--val-fraction {val_fraction}: expected 0 <= f < 0.5"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def _plan(inputs: Inputs, described: dict, output: Path) -> list[ShardTask]:
    """Cut each split's items into shards of at most split_max_count, in order."""
    tasks = []
    per_shard = described["split_max_count"]
    for split in SPLITS:
        items = inputs.splits[split]
        for number, start in enumerate(range(0, len(items), per_shard)):
            chunk = tuple(items[start : start + per_shard])
            fingerprint = json.dumps(
                [described, [_planned(item) for item in chunk]], sort_keys=True
            )
            tasks.append(
                ShardTask(
                    name=f"{split}-{number:06d}.tar",
                    split=split,
                    items=chunk,
                    output=str(output),
                    size=described["size"],
                    image_format=described["image_format"],
                    quality=described["quality"],
                    seed=described.get("seed", 0),
                    plan=hashlib.sha256(fingerprint.encode()).hexdigest(),
                )
            )
    return tasks


def _planned(item: Item) -> list:
    """An item as its shard's plan sees it; an item without captions as before captions existed,
    so packs made then still verify and are reused."""
    return list(item) if item.captions else list(item[:-1])


def _run(tasks: list[ShardTask], workers: int, counter) -> Iterator[dict]:
    """Pack the tasks, yielding records as shards finish (in any order); `counter.value` counts
    the images packed meanwhile."""
    if workers == 1 or len(tasks) <= 1:
        init_worker(counter)
        yield from map(pack_shard, tasks)
        return
    # spawn, not fork: the caller may hold threads (torch, rich) that a fork would copy mid-state.
    context = multiprocessing.get_context("spawn")
    pool_size = min(workers, len(tasks))
    with context.Pool(pool_size, initializer=init_worker, initargs=(counter,)) as pool:
        yield from pool.imap_unordered(pack_shard, tasks)


def _pack_missing(
    tasks: list[ShardTask],
    records: dict[str, dict],
    workers: int,
    progress: bool,
    title: str,
    sealed: Callable[[dict], None] | None = None,
) -> None:
    """Pack the tasks without a record, adding theirs to `records`, under a rich progress bar;
    `sealed` is called with each record, reused or new, once its shard is complete."""
    todo = [task for task in tasks if task.name not in records]
    images_in = {task.name: len(task.items) for task in tasks}
    columns = (
        TextColumn("packing {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress) as bar:
        reused = sum(images_in[name] for name in records)
        bar_task = bar.add_task(title, total=sum(images_in.values()), completed=reused)
        if records:
            bar.console.print(f"reusing {len(records)} of {len(tasks)} shards (sha256 verified)")
        # Per image, not per shard: a thread copies the workers' shared count into the bar.
        counter = multiprocessing.get_context("spawn").Value("q", 0, lock=False)
        done = threading.Event()

        def follow() -> None:
            while not done.wait(0.25):
                bar.update(bar_task, completed=reused + counter.value)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        try:
            reused_records = [records[task.name] for task in tasks if task.name in records]
            for record in reused_records if sealed is not None else []:
                sealed(record)
            for record in _run(todo, workers, counter):
                records[record["name"]] = record
                if sealed is not None:
                    sealed(record)  # while the workers pack on (an upload: remote_pack.py)
        finally:
            done.set()
            follower.join()
        bar.update(bar_task, completed=sum(images_in.values()))


def _manifest(
    source: str,
    described: dict,
    tasks: list[ShardTask],
    records: dict[str, dict],
    skipped: list[dict],
) -> dict:
    splits = {}
    for split in SPLITS:
        shards = [
            {
                key: value
                for key, value in records[task.name].items()
                if key not in ("skipped", "split")
            }
            for task in tasks
            if task.split == split
        ]
        splits[split] = {
            "count": sum(shard["count"] for shard in shards),
            "bytes": sum(shard["bytes"] for shard in shards),
            "shards": shards,
        }
    # The hole fill is the train mean; a pack without train images (coco val2017 only) uses all.
    pool = (
        splits["train"]["shards"]
        if splits["train"]["count"]
        else [shard for entry in splits.values() for shard in entry["shards"]]
    )
    total = max(1, sum(shard["count"] for shard in pool))
    mean_rgb = [
        sum(shard["mean_rgb"][c] * shard["count"] for shard in pool) / total for c in range(3)
    ]
    parameters = {key: value for key, value in described.items() if key != "source"}
    shard_skipped = [entry for task in tasks for entry in records[task.name]["skipped"]]
    return {
        "format": FORMAT,
        "source": source,
        "parameters": parameters,
        "image_key": described["image_format"],
        "mean_rgb": mean_rgb,
        "splits": splits,
        "skipped": skipped + shard_skipped,
    }


def pack(
    source: str,
    output: str | Path,
    input: str | Path | None = None,
    size: int = 256,
    split_max_count: int = 2000,
    workers: int = 2,
    image_format: str = "jpg",
    quality: int = 95,
    count: int = 1000,
    val_fraction: float = 0.05,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    sealed: Callable[[dict], None] | None = None,
) -> dict:
    """Pack `source` into shards under `output` and return the manifest (also written there);
    `sealed(record)` runs for each shard once it is complete, before the manifest is written.

    Raises UserError (one line) for bad arguments, a wrong input layout, no decodable image, or an
    output directory holding something else (unless `overwrite`).
    """
    _check_arguments(
        source, size, split_max_count, workers, image_format, quality, count, val_fraction
    )
    inputs = enumerate_inputs(source, input, count, val_fraction)
    output = Path(output)
    described = {
        "source": source,
        **_parameters(
            source, input, size, split_max_count, image_format, quality, count, val_fraction, seed
        ),
    }
    earlier = claim_output(output, described, overwrite)
    tasks = _plan(inputs, described, output)
    records = {
        task.name: earlier[task.name]
        for task in tasks
        if verified(output, task, earlier.get(task.name))
    }
    _pack_missing(tasks, records, workers, progress, f"{source} -> {output}", sealed)
    manifest = _manifest(source, described, tasks, records, inputs.skipped)
    training = [caption for item in inputs.splits["train"] for caption in item.captions]
    captions = caption_manifest(training, inputs.annotations, manifest["splits"], output)
    if captions is not None:
        manifest["captions"] = captions
    if not any(entry["count"] for entry in manifest["splits"].values()):
        first = manifest["skipped"][0] if manifest["skipped"] else {"path": "?", "reason": "?"}
        raise UserError(
            f"{source} input {input}: no image could be packed ({len(manifest['skipped'])} "
            f"skipped; first: {printable(first['path'] + ': ' + first['reason'], 300)})"
        )
    if not manifest["splits"]["train"]["count"]:
        warnings.warn(f"{output}: no train images; mean_rgb is taken over all splits", stacklevel=2)
    for split in ("val", "test"):
        if not manifest["splits"][split]["count"]:
            warnings.warn(
                f"{output}: split {split!r} is empty: training validates and `ganpaint eval` "
                "scores on another split, which it names",
                stacklevel=2,
            )
    write_json(output / MANIFEST, manifest)
    remove_stale_shards(output, keep=tuple(task.name for task in tasks))
    shutil.rmtree(output / STATE_DIR, ignore_errors=True)
    return manifest


def _summary(manifest: dict, output: str | Path, seconds: float) -> str:
    lines = [f"packed {manifest['source']} into {output} in {seconds:.1f} s:"]
    for split, entry in manifest["splits"].items():
        lines.append(
            f"  {split:5s} {entry['count']:8d} images  {len(entry['shards']):4d} shards  "
            f"{entry['bytes'] / 1e6:9.1f} MB"
        )
    lines.append("  mean RGB " + " ".join(f"{value:.4f}" for value in manifest["mean_rgb"]))
    if "captions" in manifest:
        captions = manifest["captions"]
        with_captions = sum(captions["images_with_captions"].values())
        without = sum(captions["images_without_captions"].values())
        lines.append(
            f"  captions: {with_captions} images with, {without} without; "
            f"{captions['tokenizer']}: {captions['vocabulary_size']} words"
        )
    skipped = manifest["skipped"]
    lines.append(
        f"  skipped {len(skipped)} inputs" + (" (all listed in manifest.json):" if skipped else "")
    )
    lines += [
        f"    {printable(entry['path'] + ': ' + entry['reason'], 300)}" for entry in skipped[:5]
    ]
    if len(skipped) > 5:
        lines.append(f"    ... and {len(skipped) - 5} more")
    return "\n".join(lines)


def pack_command(
    source: str,
    input: str | None,
    output: str,
    size: int,
    split_max_count: int,
    workers: int,
    image_format: str,
    quality: int,
    count: int,
    val_fraction: float,
    seed: int,
    overwrite: bool,
) -> int:
    """`ganpaint shards`: pack with a progress bar, then print a summary. An s3:// or gs://
    output is staged locally and uploaded shard by shard (ganpaint/data/remote_pack.py)."""
    started = time.perf_counter()
    packer = pack
    if is_remote(output):
        from ganpaint.data.remote_pack import pack_remote as packer
    manifest = packer(
        source,
        output,
        input=input,
        size=size,
        split_max_count=split_max_count,
        workers=workers,
        image_format=image_format,
        quality=quality,
        count=count,
        val_fraction=val_fraction,
        seed=seed,
        overwrite=overwrite,
        progress=True,
    )
    print(_summary(manifest, mask(output), time.perf_counter() - started))
    return 0
