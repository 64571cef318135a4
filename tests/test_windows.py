"""Windows around the holes: exact at scale 1, merged when close, shrunk for thick holes, and a
2560 x 1600 photo inpainted through a window with every pixel outside the hole untouched."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data
from test_inpaint import make_run, read, run_inpaint, write

from ganpaint.infer.export import load_generator
from ganpaint.infer.inpaint import predict_window
from ganpaint.infer.windows import (
    MAX_GROUPS,
    NetGeometry,
    Window,
    net_geometry,
    plan_windows,
    receptive_radius_px,
)
from ganpaint.models.glcic import CompletionNet
from ganpaint.models.summary import _positive_probe

ROOT = Path(__file__).parent.parent
# glcic trained on 32 px crops with holes up to 12 px: reach 6 px, receptive radius 155 px
GLCIC = NetGeometry(
    predicts_center=False, size_multiple=4, context_px=155, trained_reach_px=6.0, image_px=32
)


@pytest.fixture(scope="module")
def glcic_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("glcic") / "run", "glcic")


def astronaut(height: int, width: int) -> np.ndarray:
    """The astronaut photo resized to width x height, RGB uint8."""
    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)


def test_receptive_radius_covers_the_measured_field() -> None:
    # `ganpaint models` measures the glcic field with a gradient probe: 303 px at most
    assert receptive_radius_px(CompletionNet(1)) >= 303 / 2


def test_window_prediction_equals_the_whole_image_prediction(glcic_run: Path) -> None:
    """At scale 1 the receptive radius of context makes the window's hole prediction the whole
    image's: no border effect of the window reaches the hole. The net's weights are made positive
    averages (every path alive): with random weights far context fades below one grey level, and
    a window of half the margin would pass too (with these weights it is off by up to 5 levels)."""
    exported = load_generator(glcic_run)
    exported = dataclasses.replace(exported, generator=_positive_probe(exported.generator))
    rgb = astronaut(400, 360)
    hole = np.zeros((400, 360), bool)
    hole[190:200, 170:180] = True
    (window,) = plan_windows(hole, net_geometry(exported), "test")
    assert window.scale == 1.0
    assert (window.bottom - window.top) * (window.right - window.left) < 0.8 * hole.size
    windowed = predict_window(exported, rgb, hole, window, None)
    whole = predict_window(exported, rgb, hole, Window(0, 400, 0, 360, 1.0), None)
    rows, columns = window.inside(400, 360)
    difference = np.abs(windowed.astype(int) - whole[rows, columns])[hole[rows, columns]]
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99


def test_far_holes_get_their_own_windows_and_near_ones_merge() -> None:
    hole = np.zeros((1600, 2560), bool)
    hole[100:110, 100:110] = True  # far from the others
    hole[1000:1010, 2000:2010] = True  # these two share context: one window
    hole[1000:1010, 2100:2110] = True
    windows = plan_windows(hole, GLCIC, "test")
    assert len(windows) == 2
    first, second = windows
    assert first.bottom <= second.top or second.bottom <= first.top or first.right <= second.left
    covered = np.zeros_like(hole)
    for window in windows:
        covered[window.inside(*hole.shape)] = True
    assert covered[hole].all() and covered.mean() < 0.2


def test_thick_holes_are_shrunk_to_the_trained_scale_thin_strokes_are_not() -> None:
    hole = np.zeros((1600, 2560), bool)
    hole[400:460, 400:460] = True  # reach ~30 px, trained 6: a fifth of the size
    (window,) = plan_windows(hole, GLCIC, "test")
    assert 0.15 < window.scale < 0.25
    stroke = np.zeros((1600, 2560), bool)
    stroke[800:806, 200:1400] = True  # long but thin: reach 3 px
    (window,) = plan_windows(stroke, GLCIC, "test")
    assert window.scale == 1.0


def test_speckle_gets_one_bounding_window() -> None:
    hole = np.zeros((600, 600), bool)
    hole[::20, ::20] = True  # 900 separate pixels
    assert hole.sum() > MAX_GROUPS
    (window,) = plan_windows(hole, GLCIC, "test")
    assert window.inside(600, 600) == (slice(0, 600), slice(0, 600))


def test_large_photo_is_inpainted_through_a_window(tmp_path: Path, glcic_run: Path) -> None:
    original = np.ascontiguousarray(astronaut(1600, 2560)[..., ::-1])
    image = write(tmp_path / "big.png", original)
    hole = np.zeros((1600, 2560), bool)
    hole[700:740, 1200:1230] = True
    exported = load_generator(glcic_run)
    (window,) = plan_windows(hole, net_geometry(exported), "test")
    assert (window.bottom - window.top) * (window.right - window.left) < 0.2 * hole.size
    out = tmp_path / "out.png"
    started = time.perf_counter()
    code = run_inpaint(
        "--run",
        str(glcic_run),
        "--image",
        str(image),
        "--rect",
        "1200,700,30,40",
        "--output",
        str(out),
    )
    elapsed = time.perf_counter() - started
    result = read(out)
    assert code == 0 and result.shape == original.shape
    np.testing.assert_array_equal(result[~hole], original[~hole])
    assert (result[hole] != original[hole]).any()
    assert elapsed < 20, elapsed  # PNG decode + encode dominate; the whole image would be slower


# Plans windows, then streams batches from loader workers forked afterwards (three loaders: the
# hang it guards against struck about two forks in three).
FORK_AFTER_PLANNING = """
import multiprocessing, os, sys, threading
import numpy as np
from ganpaint import config
from ganpaint.data.stream import train_loader
from ganpaint.infer.windows import NetGeometry, plan_windows

def give_up():
    for child in multiprocessing.active_children():
        child.kill()
    os._exit(3)

hole = np.zeros((37, 53), bool)
hole[10:20, 10:30] = True
plan_windows(hole, NetGeometry(False, 4, 155, 6.0, 32), "test")
data = config.load(None, [f"data.shards={sys.argv[1]}", "data.workers=2", "data.image_px=32",
                          "data.resize_min_px=32", "data.resize_max_px=40"]).data
threading.Timer(60, give_up).start()
for _ in range(3):
    loader = iter(train_loader(data, 4, rank=0, world_size=1, seed=0, start_step=0))
    [next(loader) for _ in range(2)]
    del loader
os._exit(0)
"""


def test_loader_workers_forked_after_planning_do_not_hang(
    synthetic_shards: Path, tmp_path: Path
) -> None:
    """OpenCV's parallel labelling would start its thread pool, and a DataLoader worker forked
    after it could hang (exit 3 here) at its first OpenCV call: a training run after an inpaint
    in the same process, or this test suite, which hung that way."""
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:  # a file, not a pipe: a stuck worker could hold a pipe open
        code = subprocess.call(
            [sys.executable, "-c", FORK_AFTER_PLANNING, str(synthetic_shards)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=120,
        )
    assert code == 0, errors.read_text()[-2000:]
