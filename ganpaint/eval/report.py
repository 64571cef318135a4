"""Presenting an evaluation: the console table (model vs baselines) and the TensorBoard record."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch

from ganpaint.baselines import BASELINES

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
BUCKET_COLUMNS = ("hole_psnr", "hole_ssim")  # per hole-area bucket, one cell "PSNR / SSIM"
LOG_WIDTH = 160  # columns of the tables when stdout is not a terminal
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
    """Two rich tables, one row per method: the metrics over all images, then hole PSNR / SSIM per
    hole-area bucket. The best value of each column is bold."""
    from rich.console import Console
    from rich.table import Table

    results = report["results"]
    methods = [method for method in COLUMNS if method in results]
    # A terminal gets its own width; a log or pipe gets room for every column (rich's default for
    # them, 80, would squash the columns into ellipses).
    console = Console(width=None if sys.stdout.isatty() else LOG_WIDTH)
    title = (
        f"{report['family']} step {report['step']}: {report['images']} images of "
        f"'{report['split']}', {report['masks']} holes, seed {report['seed']}"
    )
    keys = [key for key in ROWS if key in results["model"]]
    table = Table(title=title)
    table.add_column("method")
    for key in keys:
        table.add_column(ROWS[key][0], justify="right")
    texts = [_texts(methods, key, lambda method, key=key: results[method][key]) for key in keys]
    for method in methods:
        table.add_row(COLUMNS[method], *(column[method] for column in texts))
    console.print(table)

    buckets = results["model"]["buckets"]
    table = Table(title="hole PSNR (dB) / hole SSIM by hole area (share of the image)")
    table.add_column("method")
    for bucket, values in buckets.items():
        table.add_column(f"hole {bucket} (n={values['count']})", justify="right")
    texts = [
        [
            _texts(methods, key, lambda method, b=bucket, k=key: results[method]["buckets"][b][k])
            for key in BUCKET_COLUMNS
        ]
        for bucket in buckets
    ]
    for method in methods:
        cells = (" / ".join(part[method] for part in parts) for parts in texts)
        table.add_row(COLUMNS[method], *cells)
    console.print(table)


def _texts(methods: list[str], key: str, value: Callable[[str], float]) -> dict[str, str]:
    """Each method's `value` of metric `key`, formatted; the best one (the highest, or the lowest
    where lower is better: ↓) bold."""
    label, pattern = ROWS[key]
    best = (min if label.endswith("↓") else max)(methods, key=value)
    texts = {method: pattern.format(value(method)) for method in methods}
    texts[best] = f"[bold]{texts[best]}[/bold]"
    return texts


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
