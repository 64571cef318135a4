"""The real-photo benchmark: whole photos held out, folder splits chosen by subfolder, tiles at the
training scale, the schedule kept in proportion, and one end-to-end run on generated photos."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ganpaint import cli
from ganpaint import config as config_lib
from ganpaint.data.shards import pack
from ganpaint.data.synthetic import draw
from ganpaint.errors import UserError
from ganpaint.quality import scaled_schedule, split_photos, tiles_of

ROOT = Path(__file__).parent.parent


def write_photos(folder: Path, count: int, size: int = 96) -> list[Path]:
    """`count` generated RGB images of size x 1.5 size, as JPEG files with names in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        rgb = cv2.resize(draw(index, 0, size), (size * 3 // 2, size))
        path = folder / f"photo-{index:02d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def test_whole_photos_are_held_out_every_fourth_by_name(tmp_path):
    paths = write_photos(tmp_path / "photos", 9, size=16)
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    train, held_out = split_photos(tmp_path / "photos")
    assert held_out == [paths[0], paths[4], paths[8]]
    assert train == [path for path in paths if path not in held_out]
    with pytest.raises(UserError, match="need at least 2"):
        split_photos(write_photos(tmp_path / "one", 1, size=16)[0].parent)


def test_tiles_are_cut_at_the_training_scale():
    rgb = np.arange(200 * 300 * 3, dtype=np.uint8).reshape(200, 300, 3)
    tiles = tiles_of(rgb, pack_px=100, tile_px=32)  # scaled to 100 x 150: 3 x 4 tiles
    assert len(tiles) == 12 and all(tile.shape == (32, 32, 3) for tile in tiles)


def test_schedule_keeps_the_recipe_proportions():
    schedule = config_lib.load("demo").schedule
    overrides = scaled_schedule(schedule, schedule.total_steps * 2)
    scaled = config_lib.load("demo", overrides).schedule
    assert scaled.completion_steps == 2 * schedule.completion_steps
    assert scaled.discriminator_steps == 2 * schedule.discriminator_steps
    assert scaled.total_steps == 2 * schedule.total_steps


def test_folder_with_split_subfolders_is_split_by_them(tmp_path):
    write_photos(tmp_path / "tree" / "train", 3, size=16)
    write_photos(tmp_path / "tree" / "test", 2, size=16)
    manifest = pack("folder", tmp_path / "out", tmp_path / "tree", size=16, progress=False)
    counts = {split: entry["count"] for split, entry in manifest["splits"].items()}
    assert counts == {"train": 3, "val": 0, "test": 2}


# The demo recipe at 32 px with narrow nets: seconds on 2 cores.
TINY_RECIPE = [
    "data.image_px=32",
    "masks.local_px=16",
    "masks.hole_min_px=8",
    "masks.hole_max_px=12",
    "model.width=8",
    "model.disc_width=8",
    "model.fc_features=32",
    "data.batch_size=4",
    "data.workers=0",
    "data.val_images=4",
    "log.progress=none",
]


def test_quality_command_trains_and_reports_on_held_out_tiles(tmp_path, capsys):
    write_photos(tmp_path / "photos", 5)
    output = tmp_path / "quality"
    code = cli.main(
        [
            "quality",
            "--photos",
            str(tmp_path / "photos"),
            "--output",
            str(output),
            "--steps",
            "6",
            "--pack-px",
            "64",
            "--workers",
            "1",
            *TINY_RECIPE,
        ]
    )
    assert code == 0
    split = json.loads((output / "split.json").read_text())
    assert [Path(path).name for path in split["held_out"]] == ["photo-00.jpg", "photo-04.jpg"]
    report = json.loads((output / "report-tiles.json").read_text())
    assert report["images"] == 2 * 2 * 3  # two held-out photos at 64 x 96: 2 x 3 tiles of 32 px
    assert set(report["results"]) == {
        "model",
        "mean_fill",
        "telea",
        "pyramid_fill",
        "harmonic_fill",
        "biharmonic_fill",
        "tension_fill",
    }
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("held-out tiles (12 tiles x 3 hole draws): hole PSNR ")
    # the summary is the mean of three different draws of holes
    draws = [
        json.loads((output / f"report-tiles-seed{seed}.json").read_text()) for seed in range(3)
    ]
    telea = [draw["results"]["telea"]["hole_psnr"] for draw in draws]
    assert len(set(telea)) == 3
    assert report["results"]["telea"]["hole_psnr"] == pytest.approx(sum(telea) / 3)
    assert len(report["per_seed"]) == 3
    assert "the best classical fill" in last
    # the run validated on held-out tiles, never on the training photos
    recipe = config_lib.load(output / "recipe.yaml")
    assert recipe.data.val_shards == str(output / "tiles") and recipe.data.val_split == "test"
