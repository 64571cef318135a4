"""Presenting an evaluation: the console table (model vs baselines) and the TensorBoard record."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ganpaint.eval.baselines import BASELINES

COLUMNS = {
    "model": "model",
    "model_shuffled_caption": "model, shuffled caption",  # caption families only
    **BASELINES,
}
ROWS = {  # summary key -> (label, format)
    "hole_psnr": ("hole PSNR (dB) ↑", "{:.2f}"),
    "hole_ssim": ("hole SSIM ↑", "{:.4f}"),
    "hole_l1": ("hole L1 ↓", "{:.4f}"),
    "image_psnr": ("image PSNR (dB) ↑", "{:.2f}"),
    "image_ssim": ("image SSIM ↑", "{:.4f}"),
    "image_l1": ("image L1 ↓", "{:.4f}"),
    "fid": ("FID ↓", "{:.2f}"),
    "kid": ("KID ↓", "{:.4f}"),
}
BUCKET_ROWS = ("hole_psnr", "hole_ssim", "hole_l1")
LOG_WIDTH = 200  # columns of the table when stdout is not a terminal
SCALARS = (
    "hole_psnr",
    "hole_ssim",
    "hole_l1",
    "image_psnr",
    "image_ssim",
    "image_l1",
    "fid",
    "kid",
)


def print_table(report: dict) -> None:
    """A rich table: one row per metric (and per hole-area bucket), one column per method."""
    from rich.console import Console
    from rich.table import Table

    results = report["results"]
    title = (
        f"{report['family']} step {report['step']}: {report['images']} images of "
        f"'{report['split']}', {report['masks']} holes, seed {report['seed']}"
    )
    table = Table(title=title)
    table.add_column("metric")
    methods = [method for method in COLUMNS if method in results]
    for method in methods:
        table.add_column(COLUMNS[method], justify="right")
    for key, (label, pattern) in ROWS.items():
        if key in results["model"]:
            table.add_row(label, *(pattern.format(results[method][key]) for method in methods))
    for bucket, values in results["model"]["buckets"].items():
        for key in BUCKET_ROWS:
            label, pattern = ROWS[key]
            cells = (pattern.format(results[method]["buckets"][bucket][key]) for method in methods)
            table.add_row(f"{label}, hole {bucket} (n={values['count']})", *cells)
    # A terminal gets its own width; a log or pipe gets room for every column (rich's default for
    # them, 80, would squash the six fills' columns into ellipses).
    Console(width=None if sys.stdout.isatty() else LOG_WIDTH).print(table)


def write_tensorboard(tb_dir: Path, report: dict, preview: torch.Tensor) -> None:
    """Scalars eval/<split>/<method>/<metric> at the model's step, and one image grid whose rows
    are original | model input | model | Telea."""
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid

    prefix = f"eval/{report['split']}"
    writer = SummaryWriter(log_dir=str(tb_dir))
    try:
        for method, summary in report["results"].items():
            for key in SCALARS:
                if key in summary:
                    writer.add_scalar(f"{prefix}/{method}/{key}", summary[key], report["step"])
        grid = make_grid(preview, nrow=4, padding=2, pad_value=1.0)
        writer.add_image(f"{prefix}/original_input_model_telea", grid, report["step"])
    finally:
        writer.close()
