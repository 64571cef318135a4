"""`ganpaint eval`: a trained inpainting model against the classical fills on one fixed set of holes.

The images are the first `count` of a split (deterministic centre crops at the run's image size);
the holes are drawn once from the run's mask settings (kind from --masks, seeded by --seed) and
saved as a bool tensor (`holes-<masks>-<px>px-<count>-seed<seed>.pt` beside the --json file, or in
RUN_DIR/eval/), so every model evaluated into the same folder is judged on the same holes.
Holes are drawn on the CPU so that a seed gives the same set on any machine. Each figure is
reported for the model and for every baseline (`baselines.classical_fills`: a constant colour,
Telea, pyramid and harmonic fills) on the same images and holes; the last line names the best.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import torch

from ganpaint.completion import complete, prefill
from ganpaint.config import MaskConfig
from ganpaint.errors import UserError
from ganpaint.eval.baselines import classical_fills, constant_fill_name, versus_best
from ganpaint.eval.fid import (
    FeatureExtractor,
    frechet_distance,
    kernel_inception_distance,
    load_inception,
)
from ganpaint.eval.metrics import area_bucket, image_metrics, summarize
from ganpaint.eval.report import print_table, write_tensorboard
from ganpaint.eval.runs import open_model, resolve_device

BRUSH_PRESETS = ("thin", "medium", "thick")
HOLE_CHUNK = 64  # holes are drawn in fixed chunks so the set does not depend on --batch-size
PREVIEW_IMAGES = 8
FID_HINT = (
    "FID/KID skipped: pass --inception PATH to a local inception_v3 weights file "
    "(torchvision's inception_v3_google-*.pth or pytorch-fid's pt_inception-*.pth)"
)


def eval_masks(run_masks: MaskConfig, choice: str, family: str) -> tuple[MaskConfig, str]:
    """The run's mask settings with the kind from --masks (rect | center | a brush preset).

    Centre-predicting families only fill the centre square, so they always get centre holes.
    Returns the config and the name used for the hole set.
    """
    if family in ("context_encoder", "wgan_unet"):
        if choice != "center":
            print(f"note: {family} fills only the centre square: using --masks center")
        return dataclasses.replace(run_masks, kind="center"), "center"
    if choice in BRUSH_PRESETS:
        return dataclasses.replace(run_masks, kind="brush", brush=choice), choice
    return dataclasses.replace(run_masks, kind=choice), choice


def draw_hole_set(masks: MaskConfig, count: int, image_px: int, seed: int) -> torch.Tensor:
    """`count` holes as a bool tensor [count, 1, image_px, image_px] on the CPU, True = hole."""
    from ganpaint.data.masks import hole_generator, make_holes

    chunks = []
    for index, start in enumerate(range(0, count, HOLE_CHUNK)):
        generator = hole_generator(seed, 0, index, "cpu")
        holes = make_holes(masks, min(HOLE_CHUNK, count - start), image_px, generator, "cpu")
        chunks.append(holes.hole_mask > 0.5)
    return torch.cat(chunks)


def load_or_draw_hole_set(
    path: Path, masks: MaskConfig, count: int, image_px: int, seed: int
) -> tuple[torch.Tensor, bool]:
    """The saved hole set at `path` when present, else a new one saved there. -> (holes, reused)."""
    expected = (count, 1, image_px, image_px)
    if path.is_file():
        try:
            holes = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise UserError(
                f"{path}: unreadable hole set ({type(error).__name__}); delete it to draw anew"
            ) from None
        if (
            not isinstance(holes, torch.Tensor)
            or holes.dtype != torch.bool
            or tuple(holes.shape) != expected
        ):
            raise UserError(
                f"{path}: not a bool hole set of shape {list(expected)}; delete it to draw anew"
            )
        return holes, True
    holes = draw_hole_set(masks, count, image_px, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    torch.save(holes, partial)
    partial.replace(path)
    return holes, False


def evaluate(
    generator: torch.nn.Module,
    fill_rgb: torch.Tensor,
    mean_rgb: torch.Tensor,
    batches: Iterable[torch.Tensor],
    holes: torch.Tensor,
    device: torch.device,
    extractor: FeatureExtractor | None = None,
    hole_fill: str = "mean",
) -> tuple[dict, torch.Tensor]:
    """Fill every hole with the model and the baselines; score them against the originals.

    batches: uint8 [B, 3, H, W] images, consumed in order; holes: bool [>= total, 1, H, W].
    fill_rgb and hole_fill: the model's input fill; mean_rgb: the mean-fill baseline's colour
    (a zero-filled model is compared with the zero fill instead).
    Returns ({method: summary}, preview) where summary holds the metric means, per-bucket means
    and, with an extractor, fid / kid / kid_std; preview [4 * k, 3, H, W] is original | model
    input | model | telea for the first k images.
    """
    constant_name = constant_fill_name(hole_fill)
    constant_rgb = torch.zeros(3) if hole_fill == "zero" else mean_rgb
    per_image = defaultdict(lambda: defaultdict(list))
    features = defaultdict(list)
    buckets, preview, start = [], None, 0
    for batch in batches:
        images = batch.to(device).float() / 255
        hole_mask = holes[start : start + len(batch)].to(device).float()
        start += len(batch)
        with torch.no_grad():
            completed = complete(generator, images, hole_mask, fill_rgb, hole_fill)[1].clamp(0, 1)
            baselines = classical_fills(images, hole_mask, constant_rgb.to(device), constant_name)
        filled = {"model": completed, **baselines}
        for method, result in filled.items():
            for name, values in image_metrics(result, images, hole_mask).items():
                per_image[method][name].append(values)
        buckets.append(area_bucket(hole_mask))
        if extractor is not None:
            for name, result in (("real", images), *filled.items()):
                features[name].append(extractor(result))
        if preview is None:
            shown = slice(0, PREVIEW_IMAGES)
            model_input = prefill(images, hole_mask, fill_rgb.to(device), hole_fill)
            columns = [images[shown], model_input[shown], completed[shown], filled["telea"][shown]]
            preview = torch.stack(columns, 1).flatten(0, 1).cpu()
    if start == 0:
        raise UserError("no images to evaluate")
    all_buckets = torch.cat(buckets)
    results = {}
    for method in per_image:
        values = {name: torch.cat(parts) for name, parts in per_image[method].items()}
        results[method] = summarize(values, all_buckets)
    if extractor is not None:
        real = torch.cat(features["real"])
        for method in per_image:
            fake = torch.cat(features[method])
            kid, kid_std = kernel_inception_distance(real, fake)
            results[method] |= {"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std}
    return results, preview


def _check_inputs(
    run: str, shards: str, count: int, batch_size: int, inception: str | None
) -> None:
    if not Path(run).is_dir():
        raise UserError(f"run directory not found: {run}")
    if not Path(shards).is_dir():
        raise UserError(f"shard directory not found: {shards}")
    if count < 1:
        raise UserError(f"--count must be >= 1, got {count}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    if inception and count < 2:
        raise UserError(f"--count must be >= 2 for FID/KID (--inception), got {count}")


def eval_command(
    run: str,
    shards: str,
    split: str,
    masks: str,
    count: int,
    seed: int,
    batch_size: int,
    inception: str | None,
    json_out: str | None,
    device: str,
) -> int:
    """Score RUN's exported generator on `count` images of SHARDS/split; table, JSON, TensorBoard."""
    from ganpaint.data.stream import iterate_split, read_manifest

    _check_inputs(run, shards, count, batch_size, inception)
    torch_device = resolve_device(device)
    exported = open_model(run, torch_device, inpainting=True)
    config = exported.config
    image_px = config.data.image_px
    extractor = load_inception(inception, torch_device) if inception else None
    mean_rgb = torch.tensor(read_manifest(shards)["mean_rgb"], dtype=torch.float32)
    mask_config, mask_name = eval_masks(config.masks, masks, config.model.family)
    folder = Path(json_out).parent if json_out else Path(run) / "eval"
    holes_path = folder / f"holes-{mask_name}-{image_px}px-{count}-seed{seed}.pt"
    holes, reused = load_or_draw_hole_set(holes_path, mask_config, count, image_px, seed)
    print(f"holes: {'reused' if reused else 'saved'} {holes_path}")
    batches = iterate_split(shards, split, image_px, batch_size, limit=count)
    results, preview = evaluate(
        exported.generator,
        exported.fill_rgb,
        mean_rgb,
        batches,
        holes,
        torch_device,
        extractor,
        config.model.hole_fill,
    )
    evaluated = results["model"]["buckets"]
    image_count = sum(bucket["count"] for bucket in evaluated.values())
    if image_count < count:
        print(
            f"note: split {split!r} of {shards} holds {image_count} images, fewer than --count {count}"
        )
    report = {
        "run": str(run),
        "step": exported.step,
        "family": config.model.family,
        "split": split,
        "masks": mask_name,
        "images": image_count,
        "seed": seed,
        "holes": str(holes_path),
        "results": results,
    }
    print_table(report)
    print(f"{config.model.family} step {exported.step}: {versus_best(results)}")
    if extractor is None:
        print(FID_HINT)
    write_tensorboard(Path(run) / "tb", report, preview)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        partial = Path(json_out).with_name(Path(json_out).name + ".tmp")
        partial.write_text(json.dumps(report, indent=2) + "\n")
        partial.replace(json_out)
        print(f"results: {json_out}")
    return 0
