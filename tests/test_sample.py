"""`ganpaint sample`: grid size, interpolation rows, seeding, slerp, and refusing non-dcgan runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ganpaint import config as config_lib
from ganpaint.cli import main
from ganpaint.infer.export import save_export
from ganpaint.infer.sample import INTERPOLATION_STEPS, slerp
from ganpaint.models import build_nets

PADDING = 2  # torchvision.utils.make_grid's default


def make_run(run_dir: Path, family: str) -> Path:
    """A 'trained' run dir with tiny freshly initialised nets."""
    overrides = [
        f"model.family={family}",
        "model.width=8",
        "model.disc_width=8",
        f"run.dir={run_dir}",
    ]
    if family == "glcic":
        overrides.append("model.fc_features=16")
    if family == "dcgan":
        overrides += [
            "data.image_px=64",
            "data.resize_min_px=64",
            "data.resize_max_px=64",
            "model.latent_dim=16",
        ]
    config = config_lib.load(None, overrides)
    torch.manual_seed(0)
    nets = build_nets(config.model, config.data.image_px, config.masks.local_px)
    save_export(run_dir / "export", nets.generator, nets.discriminator, config, (0.5, 0.5, 0.5), 3)
    return run_dir


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("dcgan") / "run", "dcgan")


def grid_px(columns: int, rows: int, side: int = 64) -> tuple[int, int]:
    """(width, height) of a make_grid PNG: a PADDING-px gap around and between the tiles."""
    return columns * (side + PADDING) + PADDING, rows * (side + PADDING) + PADDING


def test_grid_and_interpolations_written_with_right_size(tmp_path: Path, dcgan_run: Path) -> None:
    out = tmp_path / "samples" / "grid.png"
    assert (
        main(
            [
                "sample",
                "--run",
                str(dcgan_run),
                "--count",
                "6",
                "--output",
                str(out),
                "--interpolate",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert Image.open(out).size == grid_px(3, 2)  # 6 samples: ceil(sqrt(6)) = 3 per row
    interp = tmp_path / "samples" / "grid_interp.png"
    assert Image.open(interp).size == grid_px(INTERPOLATION_STEPS, 2)


def test_same_seed_same_grid(tmp_path: Path, dcgan_run: Path) -> None:
    grids = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path / f"{name}.png"
        assert (
            main(
                [
                    "sample",
                    "--run",
                    str(dcgan_run),
                    "--count",
                    "4",
                    "--output",
                    str(out),
                    "--seed",
                    str(seed),
                    "--device",
                    "cpu",
                ]
            )
            == 0
        )
        grids.append(np.asarray(Image.open(out)))
    np.testing.assert_array_equal(grids[0], grids[1])
    assert (grids[0] != grids[2]).any()


def test_slerp_ends_norms_and_parallel_case() -> None:
    generator = torch.Generator().manual_seed(0)
    start, end = torch.randn(2, 3, 100, generator=generator)
    path = slerp(start, end, torch.linspace(0, 1, 5))
    assert path.shape == (3, 5, 100)
    torch.testing.assert_close(path[:, 0], start)
    torch.testing.assert_close(path[:, -1], end)
    # Between orthogonal-ish unit vectors, the great circle keeps the norm at 1.
    unit_start, unit_end = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    middle = slerp(unit_start, unit_end, torch.tensor([0.5]))[0, 0]
    torch.testing.assert_close(middle, torch.tensor([2**-0.5, 2**-0.5]))
    # Identical ends: no division by sin(0), the path stays put.
    same = slerp(unit_start, unit_start, torch.linspace(0, 1, 3))
    torch.testing.assert_close(same[0], unit_start.expand(3, 2))


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--count", "0"], "--count"),
        (["--interpolate", "-1"], "--interpolate"),
        (["--output", "{tmp}/grid.txt"], "grid.txt"),
    ],
)
def test_bad_arguments_one_line_exit_2(
    tmp_path: Path, dcgan_run: Path, capsys, arguments, expected
) -> None:
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    if "--output" not in arguments:
        arguments += ["--output", str(tmp_path / "grid.png")]
    assert main(["sample", "--run", str(dcgan_run), "--device", "cpu", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and expected in error, error


@pytest.mark.parametrize("family", ["glcic", "missing"])
def test_non_dcgan_or_missing_run_exit_2(tmp_path: Path, capsys, family: str) -> None:
    run = tmp_path / "run"
    if family != "missing":
        make_run(run, family)
    assert (
        main(["sample", "--run", str(run), "--output", str(tmp_path / "g.png"), "--device", "cpu"])
        == 2
    )
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and str(run) in error, error
