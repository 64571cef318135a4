"""The `ganpaint` console script: argument parsing and dispatch only, no logic.

Each subcommand imports its module lazily (torch alone costs seconds) and receives plain keyword
arguments. A `UserError` anywhere below is printed as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ganpaint.errors import UserError


def _shards(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("shards", help="pack images into WebDataset tar shards + manifest.json")
    p.add_argument("--source", required=True, choices=["celeba", "coco", "folder", "synthetic"])
    p.add_argument("--input", help="dataset root (not for synthetic)")
    p.add_argument("--output", required=True, help="output directory for shards and manifest")
    p.add_argument("--size", type=int, default=256, help="shortest side after resizing (px)")
    p.add_argument("--split-max-count", type=int, default=2000, help="images per shard")
    p.add_argument("--workers", type=int, default=2, help="packing processes")
    p.add_argument("--format", dest="image_format", default="jpg", choices=["jpg", "png", "webp"])
    p.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality")
    p.add_argument("--count", type=int, default=1000, help="synthetic: number of images")
    p.add_argument("--val-fraction", type=float, default=0.05, help="folder/hash split: val share")
    p.add_argument("--seed", type=int, default=0, help="synthetic drawing seed")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an output dir holding other data"
    )
    p.set_defaults(handler="ganpaint.data.shards:pack_command")


def _train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train in this process (accelerate launch train.py for many)")
    p.add_argument("--config", required=True, help="configs/NAME.yaml")
    p.add_argument("overrides", nargs="*", help="dotted.key=value")
    p.set_defaults(handler="ganpaint.train.loop:train_command")


def _models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="layer tables, parameter counts, GFLOPs, receptive field")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", help="dotted.key=value")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON")
    p.set_defaults(handler="ganpaint.models.summary:models_command")


def _eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="hole PSNR/SSIM/L1 (+FID/KID) against baselines")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--shards", required=True, help="shard directory")
    p.add_argument("--split", default="val")
    p.add_argument("--masks", default="rect", choices=["rect", "center", "thin", "medium", "thick"])
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--inception", help="local Inception weights file for FID/KID")
    p.add_argument("--json", dest="json_out", help="write results here")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler="ganpaint.eval.evaluate:eval_command")


def _inpaint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inpaint", help="fill the holes of your own images")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run directory (uses export/)")
    source.add_argument("--weights", help="export safetensors file")
    p.add_argument("--image", required=True, help="image file or directory")
    hole = p.add_mutually_exclusive_group(required=True)
    hole.add_argument("--mask", help="mask image (white = hole) or directory matched by name")
    hole.add_argument("--rect", help="X,Y,W,H hole rectangle")
    p.add_argument("--output", required=True, help="output file or directory")
    p.add_argument("--blend", default="poisson", choices=["poisson", "none"])
    p.add_argument("--device", default="auto")
    p.set_defaults(handler="ganpaint.inpaint:inpaint_command")


def _sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="dcgan: grid of samples and latent interpolations")
    p.add_argument("--run", required=True)
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--output", required=True, help="grid PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interpolate", type=int, default=0, help="K pairs of latent interpolations")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler="ganpaint.sample:sample_command")


def _bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="img/s, ms/step, TFLOP/s, MFU, memory per phase")
    p.add_argument("--config", required=True)
    p.add_argument("overrides", nargs="*", help="dotted.key=value")
    p.add_argument("--phases", default="", help="comma list of phase numbers (default: all)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--data", default="synthetic", help="synthetic | SHARD_DIR")
    p.add_argument("--loader-only", action="store_true", help="loader img/s per worker count")
    p.add_argument("--workers", default="1,2", help="loader-only: worker counts to try")
    p.add_argument("--json", dest="json_out")
    p.set_defaults(handler="ganpaint.bench:bench_command")


def _quality(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quality", help="real-photo benchmark: hold out photos, train, compare")
    p.add_argument("--photos", required=True, help="folder of photos (every 4th is held out)")
    p.add_argument("--output", default="runs/quality", help="shards, run and reports go here")
    p.add_argument("--config", help="the recipe to train (default: configs/demo.yaml)")
    p.add_argument("--steps", type=int, default=650, help="training steps (phases kept in ratio)")
    p.add_argument("--minutes", type=float, help="instead of --steps: minutes at the measured pace")
    p.add_argument("--pack-px", type=int, default=256, help="photos' shortest side when packed")
    p.add_argument("--skimage", action="store_true", help="also test on skimage.data photos")
    p.add_argument("--workers", type=int, default=2, help="packing processes")
    p.add_argument("overrides", nargs="*", help="dotted.key=value for the recipe")
    p.set_defaults(handler="ganpaint.quality:quality_command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganpaint", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_shards, _train, _models, _eval, _inpaint, _sample, _bench, _quality):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    module_name, function_name = args.pop("handler").split(":")
    args.pop("command")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        return int(handler(**args) or 0)
    except UserError as error:
        print(f"ganpaint: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ganpaint: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
