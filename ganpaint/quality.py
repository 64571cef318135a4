"""`ganpaint quality`: the real-photo benchmark. Whole photos are held out; a recipe (the demo's by
default) trains on the others; the model is scored beside the classical fills on tiles of the
held-out photos, at the scale it trained on, with the recipe's own holes.

Everything lands under --output (default runs/quality):
    split.json            which photos trained and which were held out (every 4th by name)
    staging/              links to the training photos and the held-out tiles as PNG
    shards/               the training photos packed at --pack-px (shortest side)
    tiles/                the held-out tiles packed as they are (split "test"); with --skimage
    tiles-skimage/        also tiles of scikit-image's sample photos
    recipe.yaml, run/     the training config and its run; it validates on held-out tiles too
    report-*-seed*.json   model vs mean / Telea / pyramid / harmonic / biharmonic / tension fill:
                          hole PSNR, SSIM, L1 with one draw of holes (--hole-seeds draws)
    report-*.json         their means over the draws, and each draw's verdict line
Re-running the same command resumes the run (a finished run is evaluated again).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from ganpaint import config as config_lib
from ganpaint.config import ScheduleConfig
from ganpaint.data.packing import resize_shortest
from ganpaint.data.shards import pack
from ganpaint.data.sources import IMAGE_SUFFIXES, ImageReader, Item, SkipImage
from ganpaint.errors import UserError
from ganpaint.files import write_text_atomically

HELD_OUT_EVERY = 4  # photos 0, 4, 8, ... (sorted by name) are held out: a quarter of them
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # colour photos in skimage.data
DEFAULT_RECIPE = "demo"


def split_photos(folder: Path) -> tuple[list[Path], list[Path]]:
    """(train, held out): the folder's images sorted by name, every HELD_OUT_EVERY-th held out."""
    photos = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )
    held_out = photos[::HELD_OUT_EVERY]
    train = [path for path in photos if path not in held_out]
    if not train:
        raise UserError(
            f"--photos {folder}: {len(photos)} images; need at least 2 (one to train, one held out)"
        )
    return train, held_out


def tiles_of(rgb: np.ndarray, pack_px: int, tile_px: int) -> list[np.ndarray]:
    """The photo at the training scale (shortest side pack_px), cut into tile_px squares."""
    scaled = resize_shortest(rgb, pack_px)
    height, width = scaled.shape[:2]
    return [
        scaled[top : top + tile_px, left : left + tile_px]
        for top in range(0, height - tile_px + 1, tile_px)
        for left in range(0, width - tile_px + 1, tile_px)
    ]


def _write_tiles(photos: dict[str, np.ndarray], folder: Path, pack_px: int, tile_px: int) -> int:
    """Tiles of every photo as folder/test/TTTT-PP.png: name order interleaves the photos, so the
    first validation images come from all of them. Returns the tile count."""
    target = folder / "test"
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for photo_index, rgb in enumerate(photos.values()):
        for tile_index, tile in enumerate(tiles_of(rgb, pack_px, tile_px)):
            name = target / f"{tile_index:04d}-{photo_index:02d}.png"
            if not name.exists():
                cv2.imwrite(str(name), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR))
            count += 1
    return count


def _read_rgb(path: Path) -> np.ndarray:
    """The photo as packing reads it (EXIF rotation applied), uint8 RGB [H, W, 3]."""
    try:
        return ImageReader(0, 0)(Item(path.stem, str(path)))
    except SkipImage as error:
        raise UserError(f"{path}: {error}") from None


def _skimage_photos() -> dict[str, np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        raise UserError("--skimage needs scikit-image: pip install scikit-image") from None
    return {name: getattr(data, name)() for name in SKIMAGE_PHOTOS}


def scaled_schedule(schedule: ScheduleConfig, total_steps: int) -> list[str]:
    """Overrides that keep the recipe's phase proportions over `total_steps` steps."""
    fraction = total_steps / schedule.total_steps
    completion = round(schedule.completion_steps * fraction)
    discriminator = round(schedule.discriminator_steps * fraction)
    return [
        f"schedule.completion_steps={completion}",
        f"schedule.discriminator_steps={discriminator}",
        f"schedule.total_steps={max(total_steps, completion + discriminator)}",
    ]


def prepare(
    photos: Path, output: Path, pack_px: int, tile_px: int, skimage: bool, workers: int
) -> dict[str, Path]:
    """Split, stage and pack. Returns {"shards": ..., "tiles": ..., ["tiles-skimage": ...]}."""
    train, held_out = split_photos(photos)
    output.mkdir(parents=True, exist_ok=True)
    split = {"train": [str(path) for path in train], "held_out": [str(path) for path in held_out]}
    (output / "split.json").write_text(json.dumps(split, indent=2) + "\n")
    links = output / "staging" / "photos"
    links.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(train):
        link = links / f"{index:04d}{path.suffix.lower()}"
        if not link.exists():
            link.symlink_to(path.resolve())
    quiet = {"workers": workers, "progress": False, "overwrite": True}
    with warnings.catch_warnings():  # a handful of photos leaves a split small: that is the point
        warnings.simplefilter("ignore", UserWarning)
        pack("folder", output / "shards", links, size=pack_px, **quiet)
    sets = {"tiles": {path.stem: _read_rgb(path) for path in held_out}}
    if skimage:
        sets["tiles-skimage"] = _skimage_photos()
    packed = {"shards": output / "shards"}
    for name, images in sets.items():
        count = _write_tiles(images, output / "staging" / name, pack_px, tile_px)
        print(f"{name}: {count} tiles of {tile_px} px from {len(images)} held-out photos")
        with warnings.catch_warnings():  # only a test split: no training mean to compute
            warnings.simplefilter("ignore", UserWarning)
            pack("folder", output / name, output / "staging" / name, size=tile_px,
                 image_format="png", **quiet)  # fmt: skip
        packed[name] = output / name
    return packed


def _run(arguments: list[str], what: str) -> None:
    """A ganpaint subcommand in a fresh process: this one has run OpenCV's thread pool, which a
    forked loader worker would inherit mid-state."""
    command = [sys.executable, "-m", "ganpaint", *arguments]
    if subprocess.run(command, check=False).returncode:
        raise UserError(f"{what} failed: {' '.join(command)}")


def mean_results(reports: list[dict]) -> dict[str, dict[str, float]]:
    """{method: {metric: mean over reports}} of the overall hole and image metrics."""
    methods = reports[0]["results"]
    return {
        method: {
            metric: sum(report["results"][method][metric] for report in reports) / len(reports)
            for metric, value in methods[method].items()
            if isinstance(value, float)
        }
        for method in methods
    }


def _evaluate(run_dir: str, packed: dict[str, Path], output: Path, hole_seeds: int) -> None:
    """`ganpaint eval` of the run on every held-out tile set, once per hole seed (one draw of holes
    on ~100 tiles moves the fills' means by a few tenths of a dB: the seeds average that out);
    the last lines sum them up."""
    from ganpaint.baselines import versus_best
    from ganpaint.eval.evaluate import eval_command

    tile_sets = [name for name in packed if name != "shards"]
    summaries = {}
    for name in tile_sets:
        count = len(list((output / "staging" / name / "test").glob("*.png")))
        reports = []
        for seed in range(hole_seeds):
            print(f"--- held-out {name}: {count} tiles, hole seed {seed} ---")
            path = output / f"report-{name}-seed{seed}.json"
            eval_command(
                run=run_dir,
                shards=str(packed[name]),
                split="test",
                masks="rect",
                count=count,
                seed=seed,
                batch_size=64,
                inception=None,
                json_out=str(path),
                device="auto",
            )
            reports.append(json.loads(path.read_text()))
        summary = {
            "images": reports[0]["images"],
            "hole_seeds": hole_seeds,
            "results": mean_results(reports),
            "per_seed": [versus_best(report["results"]) for report in reports],
        }
        write_text_atomically(output / f"report-{name}.json", json.dumps(summary, indent=2) + "\n")
        summaries[name] = summary
    for name, summary in summaries.items():
        print(
            f"held-out {name} ({summary['images']} tiles x {hole_seeds} hole draws): "
            f"{versus_best(summary['results'])}"
        )


def quality_command(
    photos: str,
    output: str,
    config: str | None,
    steps: int,
    pack_px: int,
    skimage: bool,
    workers: int,
    overrides: list[str],
    hole_seeds: int = 3,
) -> int:
    """Prepare the data, train the recipe for `steps`, evaluate on the held-out tiles."""
    folder = Path(photos).expanduser()
    if not folder.is_dir():
        raise UserError(f"--photos {photos}: not a directory")
    if steps < 1 or pack_px < 16 or hole_seeds < 1:
        raise UserError(
            f"--steps {steps} / --pack-px {pack_px} / --hole-seeds {hole_seeds}: expected >= 1 / "
            ">= 16 / >= 1"
        )
    output_dir = Path(output)
    recipe = config_lib.load(config or DEFAULT_RECIPE, overrides)
    if pack_px < recipe.data.image_px:
        raise UserError(f"--pack-px {pack_px} is below the recipe's data.image_px")
    packed = prepare(folder, output_dir, pack_px, recipe.data.image_px, skimage, workers)
    settings = [
        f"data.shards={packed['shards']}",
        f"data.val_shards={packed['tiles']}",
        "data.val_split=test",
        f"data.resize_min_px={pack_px}",
        f"data.resize_max_px={pack_px}",
        f"run.dir={output_dir / 'run'}",
        *overrides,
        *scaled_schedule(recipe.schedule, steps),
    ]
    run_config = config_lib.load(config or DEFAULT_RECIPE, settings)
    recipe_file = output_dir / "recipe.yaml"
    config_lib.save(run_config, recipe_file)
    started = time.perf_counter()
    _run(["train", "--config", str(recipe_file)], "training")
    elapsed = time.perf_counter() - started
    print(f"trained {run_config.schedule.total_steps} steps in {elapsed:.0f} s")
    _evaluate(run_config.run.dir, packed, output_dir, hole_seeds)
    return 0
