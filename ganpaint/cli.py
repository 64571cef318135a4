"""The `ganpaint` console script: argument parsing and dispatch only, no logic.

Each subcommand imports its module lazily (torch alone costs seconds) and receives plain keyword
arguments. A `UserError` (or a file-system `OSError`) anywhere below is printed as one line and
exits with status 2 (`errors.error_line`: one line of at most 400 characters); train.py is this
entry with the `train` command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from ganpaint import __version__
from ganpaint.errors import UserError, describe_os_error, print_error

DESCRIPTION = """Train GAN image-inpainting models (GLCIC, Context Encoders, a WGAN U-Net) and DCGAN
faces on WebDataset shards with one Accelerate loop; evaluate them beside classical fills and
inpaint your own photos. `ganpaint COMMAND --help` describes each command; `ganpaint config
--list` lists the presets."""

TRAIN_EPILOG = """Config keys: `ganpaint config --show PRESET` prints every key with its value (the
preset files under configs/ comment them). Override any of them as dotted.key=value, e.g.
`ganpaint train --config demo schedule.total_steps=2000 run.dir=runs/longer`.

Resuming: re-running the same command continues from the run directory's newest complete
checkpoint; `--resume RUN_DIR` continues with the run's saved config (overrides may change
anything but the model and the data, and are recorded in RUN_DIR/config_changes.jsonl);
`--resume-from RUN_DIR/checkpoints/step-N` picks the checkpoint."""


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
    p = sub.add_parser(
        "train",
        help="train in this process (accelerate launch train.py for many)",
        epilog=TRAIN_EPILOG,
    )
    add_train_arguments(p)
    p.set_defaults(handler="ganpaint.training.loop:train_command")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `ganpaint train` and of `train.py` (the same loop under a launcher)."""
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--config", help="a preset name (demo) or a YAML path")
    start.add_argument(
        "--resume", metavar="RUN_DIR", help="continue this run with its saved config.yaml"
    )
    parser.add_argument(
        "--resume-from",
        metavar="CHECKPOINT",
        help="RUN/checkpoints/step-N: continue from this checkpoint instead of the newest",
    )
    parser.add_argument("overrides", nargs="*", help="dotted.key=value")


def _config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="list the presets, or print one resolved with every key")
    p.add_argument("--list", dest="list_presets", action="store_true", help="preset names")
    p.add_argument("--show", help="a preset name or YAML path: print it resolved")
    p.add_argument("overrides", nargs="*", help="dotted.key=value (with --show)")
    p.set_defaults(handler="ganpaint.config:config_command")


def _models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="layer tables, parameter counts, GFLOPs, receptive field")
    p.add_argument("--config", required=True, help="a preset name or a YAML path")
    p.add_argument("overrides", nargs="*", help="dotted.key=value")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON")
    p.set_defaults(handler="ganpaint.models.summary:models_command")


def _eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="hole PSNR/SSIM/L1 (+FID/KID) against baselines")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--shards", required=True, help="shard directory")
    p.add_argument("--split", default="val", help="shard split to score")
    p.add_argument(
        "--masks",
        default="rect",
        choices=["rect", "center", "thin", "medium", "thick"],
        help="hole kind (thin/medium/thick: brush strokes)",
    )
    p.add_argument("--count", type=int, default=500, help="images scored")
    p.add_argument("--seed", type=int, default=0, help="seed of the saved hole set")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--inception", help="local Inception weights file for FID/KID")
    p.add_argument("--json", dest="json_out", help="write results here")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
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
    p.add_argument(
        "--blend",
        default="poisson",
        choices=["poisson", "none"],
        help="poisson: the paper's fast-marching + Poisson post-processing",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--caption", help="caption models: what the image shows, e.g. 'a red bus'")
    _max_megapixels(p)
    p.set_defaults(handler="ganpaint.infer.inpaint:inpaint_command")


def _max_megapixels(p: argparse.ArgumentParser) -> None:
    # SUPPRESS leaves the handler's own default (ganpaint.infer.images.DEFAULT_MAX_MEGAPIXELS) in force
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=argparse.SUPPRESS,
        help="refuse larger images from their header, before decoding (default 40)",
    )


def _serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="a local web page to try models with a brush (ganpaint[serve])"
    )
    p.add_argument("--run", dest="runs", action="append", required=True, help="run dir (repeat)")
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it to your network")
    p.add_argument("--port", type=int, default=7860, help="0 picks a free port")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--allowed-hosts",
        dest="allowed",
        help="host names requests may carry, comma-separated, * for any (default: the loopback "
        "names and --host; any name with --host 0.0.0.0)",
    )
    p.add_argument(
        "--queue", type=int, default=4, help="fills that may wait; more are refused at once"
    )
    _max_megapixels(p)
    p.set_defaults(handler="ganpaint.serve.command:serve_command")


def _sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="dcgan: grid of samples and latent interpolations")
    p.add_argument("--run", required=True, help="run directory (uses export/)")
    p.add_argument("--count", type=int, default=64, help="samples in the grid")
    p.add_argument("--output", required=True, help="grid PNG")
    p.add_argument("--seed", type=int, default=0, help="latent seed")
    p.add_argument("--interpolate", type=int, default=0, help="K pairs of latent interpolations")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(handler="ganpaint.infer.sample:sample_command")


def _bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="img/s, ms/step, TFLOP/s, MFU, memory per phase")
    p.add_argument("--config", required=True, help="a preset name or a YAML path")
    p.add_argument("overrides", nargs="*", help="dotted.key=value")
    p.add_argument("--phases", default="", help="comma list of phase numbers (default: all)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, autotune)")
    p.add_argument("--data", default="synthetic", help="synthetic | SHARD_DIR")
    p.add_argument(
        "--compare",
        action="store_true",
        help="with --data SHARD_DIR: also synthetic, and the ratio",
    )
    p.add_argument("--profile", help="append each phase's top operators (torch.profiler) here")
    p.add_argument("--loader-only", action="store_true", help="loader img/s per worker count")
    p.add_argument("--workers", default="1,2", help="loader-only: worker counts to try")
    p.add_argument("--json", dest="json_out", help="also write the rows here")
    p.set_defaults(handler="ganpaint.training.bench:bench_command")


def _quality(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quality",
        help="real-photo benchmark: hold out whole photos, train, compare with classical fills",
    )
    p.add_argument(
        "--photos", required=True, help="folder of photos (every 4th by name is held out)"
    )
    p.add_argument("--output", default="runs/quality", help="shards, run and reports go here")
    p.add_argument(
        "--config", help="the recipe to train, a preset name or a YAML path (default: demo)"
    )
    p.add_argument(
        "--steps", type=int, default=650, help="training steps (the phases keep their ratio)"
    )
    p.add_argument("--pack-px", type=int, default=256, help="the photos' shortest side when packed")
    p.add_argument("--skimage", action="store_true", help="also score tiles of skimage.data photos")
    p.add_argument("--workers", type=int, default=2, help="packing processes")
    p.add_argument(
        "--hole-seeds", type=int, default=3, help="draws of holes to average the scores over"
    )
    p.add_argument("overrides", nargs="*", help="dotted.key=value for the recipe")
    p.set_defaults(handler="ganpaint.quality:quality_command")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's default after its help (when it has one); descriptions keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = action.default is not None and action.default is not False
        if shown and action.default != argparse.SUPPRESS and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ganpaint", description=DESCRIPTION, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ganpaint {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _shards,
        _train,
        _config,
        _models,
        _eval,
        _inpaint,
        _sample,
        _bench,
        _quality,
        _serve,
    ):
        add(sub)
    for command in sub.choices.values():
        command.formatter_class = _HelpFormatter
    return parser


# How gloo reports a collective whose peer process has ended.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def _process_count() -> int:
    """The launcher's process count (1 without a launcher; a malformed one is refused later)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1


def main(argv: list[str] | None = None, program: str = "ganpaint") -> int:
    """Parse, dispatch, and turn every failure into one line and an exit status, on every rank:
    a rank that raised must leave (its peers' collectives then fail too, and the launcher stops
    the rest). `program` names the entry point in those lines (train.py under a launcher)."""
    where = f"{program} (rank {os.environ.get('RANK', 0)})" if _process_count() > 1 else program
    args = vars(build_parser().parse_args(argv))
    module_name, function_name = args.pop("handler").split(":")
    command = args.pop("command")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
        return int(handler(**args) or 0)
    except UserError as error:
        print_error(where, str(error))
        return 2
    except OSError as error:
        print_error(where, describe_os_error(error))
        return 2
    except KeyboardInterrupt:
        kept = " (the newest complete checkpoint is kept)" if command == "train" else ""
        print(f"{where}: interrupted{kept}", file=sys.stderr)
        return 130
    except Exception as error:
        if any(words in str(error) for words in PEER_GONE):
            print_error(where, "another process ended, so this one stops (that process says why)")
            return 1
        traceback.print_exc()  # a bug: its traceback is what a report needs
        print_error(where, f"{type(error).__name__}: {next(iter(str(error).splitlines()), '')}")
        return 1


def run(argv: list[str] | None = None, program: str = "ganpaint") -> None:
    """The console script and train.py: `main()`, then leave. After a failure or an interrupt,
    leave without waiting for child processes: a data loader worker ignores the stop signals
    (ganpaint/data/stream.py), so one caught mid-start by the error could otherwise block the
    interpreter's exit for ever (orphaned, it ends by itself within seconds). With several
    processes, leave at once too: gloo can abort at interpreter shutdown after all work is done,
    and by then the process group is torn down and the streams are flushed."""
    status = main(argv, program)
    if status or _process_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
