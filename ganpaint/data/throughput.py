"""Loader throughput: images per second of the training stream, total and per worker.

    python -m ganpaint.data.throughput SHARD_DIR --image-px 256 --resize-max-px 384 --workers 1,2
    python -m ganpaint.data.throughput SHARD_DIR --http   # also over HTTP on localhost: the ratio

Measures the real training path (tar reading, shuffle buffer, decode, GLCIC crop and flip,
batching, worker hand-off) after a warm-up, without a model.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack

from ganpaint.config import DataConfig
from ganpaint.data.serve_http import serve
from ganpaint.data.stream import train_loader


def measure_loader(
    shard_dir,
    image_px: int,
    workers: int,
    batches: int,
    batch_size: int = 64,
    resize_max_px: int | None = None,
) -> dict:
    """Time `batches` batches of the training stream after a warm-up of one batch per worker and
    one more. Crops: shortest side in [image_px, resize_max_px or image_px], then image_px square.

    Returns workers, batch_size, batches, images, seconds, img_per_s, img_per_s_per_worker.
    """
    data = DataConfig(
        shards=str(shard_dir),
        image_px=image_px,
        resize_min_px=image_px,
        resize_max_px=resize_max_px or image_px,
        workers=workers,
    )
    stream = iter(train_loader(data, batch_size, rank=0, world_size=1, seed=0, start_step=0))
    for _ in range(max(1, workers) + 1):  # workers start and fill their shuffle buffers
        next(stream)
    started = time.perf_counter()
    for _ in range(batches):
        next(stream)
    seconds = time.perf_counter() - started
    images = batches * batch_size
    return {
        "workers": workers,
        "batch_size": batch_size,
        "batches": batches,
        "images": images,
        "seconds": seconds,
        "img_per_s": images / seconds,
        "img_per_s_per_worker": images / seconds / max(1, workers),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shard_dir")
    parser.add_argument("--image-px", type=int, default=256)
    parser.add_argument("--resize-max-px", type=int, default=None, help="default: --image-px")
    parser.add_argument("--workers", default="1,2", help="comma list of worker counts")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--http",
        action="store_true",
        help="also read SHARD_DIR over HTTP from a localhost server and give the ratio to disk",
    )
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        sources = {"disk": args.shard_dir}
        if args.http:  # fetched, verified and read like any remote shard directory
            sources["http"] = stack.enter_context(serve(args.shard_dir))[1]
        print(
            f"{'source':>6} {'workers':>7} {'img/s':>9} {'img/s/worker':>13} {'batches':>8} "
            f"{'seconds':>8} {'vs disk':>8}"
        )
        for workers in (int(value) for value in args.workers.split(",")):
            disk = None
            for name, location in sources.items():
                result = measure_loader(
                    location,
                    args.image_px,
                    workers,
                    args.batches,
                    args.batch_size,
                    args.resize_max_px,
                )
                disk = disk or result["img_per_s"]
                print(
                    f"{name:>6} {workers:7d} {result['img_per_s']:9.0f} "
                    f"{result['img_per_s_per_worker']:13.0f} {args.batches:8d} "
                    f"{result['seconds']:8.2f} {result['img_per_s'] / disk:8.2f}"
                )


if __name__ == "__main__":
    main()
