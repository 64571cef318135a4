"""`ganpaint eval`: a trained inpainting model against mean-fill and Telea on one fixed set of holes.

The images are the first `count` of a split (deterministic centre crops at the run's image size);
the holes are drawn once from the run's mask settings (kind from --masks, seeded by --seed) and
saved as a bool tensor (`holes-<masks>-<px>px-<count>-seed<seed>.pt` beside the --json file, or in
RUN_DIR/eval/), so every model evaluated into the same folder is judged on the same holes.
Holes are drawn on the CPU so that a seed gives the same set on any machine. Each figure is
reported for the model and for both baselines on the same images and holes. A caption model is
scored twice: with each image's first caption, and with the next image's ("model, shuffled
caption"), so that the table shows what the text adds.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from ganpaint.baselines import BASELINES, classical_fills, versus_best
from ganpaint.config import MaskConfig
from ganpaint.data.remote import is_remote, mask
from ganpaint.errors import UserError
from ganpaint.eval.fid import (
    FeatureExtractor,
    frechet_distance,
    kernel_inception_distance,
    load_inception,
)
from ganpaint.eval.metrics import area_bucket, image_metrics, summarize
from ganpaint.eval.report import print_table, write_tensorboard
from ganpaint.files import atomic_path, write_text_atomically
from ganpaint.infer.export import Exported
from ganpaint.infer.runs import open_model, resolve_device
from ganpaint.models import Family

METHODS = ("model", *BASELINES)
SHUFFLED_CAPTION = "model_shuffled_caption"  # caption families: the model given another caption
BRUSH_PRESETS = ("thin", "medium", "thick")
HOLE_CHUNK = 64  # holes are drawn in fixed chunks so the set does not depend on --batch-size
PREVIEW_IMAGES = 8
FID_HINT = (
    "FID/KID skipped: pass --inception PATH to a local inception_v3 weights file "
    "(torchvision's inception_v3_google-*.pth or pytorch-fid's pt_inception-*.pth)"
)


def eval_masks(run_masks: MaskConfig, choice: str, family: Family) -> tuple[MaskConfig, str]:
    """The run's mask settings with the kind from --masks (rect | center | a brush preset).

    Centre-predicting families only fill the centre square, so they always get centre holes.
    Returns the config and the name used for the hole set.
    """
    if family.predicts_center:
        if choice != "center":
            print(f"note: {family.name} fills only the centre square: using --masks center")
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
    with atomic_path(path) as partial:
        torch.save(holes, partial)
    return holes, False


def _with_shuffled_captions(
    batches: Iterable, captions: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
    """(images, tokens, shuffled tokens) per batch. Shuffled: every image gets the caption of the
    next image of the set (the last image the first's); the set is read whole first."""
    if not captions:
        yield from ((batch, None, None) for batch in batches)
        return
    pairs = list(batches)
    if not pairs:
        return
    shuffled = torch.cat([tokens for _, tokens in pairs]).roll(-1, 0)
    parts = shuffled.split([len(tokens) for _, tokens in pairs])
    for (images, tokens), other in zip(pairs, parts, strict=True):
        yield images, tokens, other


def _complete(exported: Exported, images, hole_mask, tokens, device) -> torch.Tensor:
    tokens = None if tokens is None else tokens.to(device)
    with torch.no_grad():
        return exported.complete(images, hole_mask, tokens)[1].clamp(0, 1)


def evaluate(
    exported: Exported,
    mean_rgb: torch.Tensor,
    batches: Iterable,
    holes: torch.Tensor,
    device: torch.device,
    extractor: FeatureExtractor | None = None,
) -> tuple[dict, torch.Tensor]:
    """Fill every hole with the model and the baselines; score them against the originals.

    batches: uint8 [B, 3, H, W] images (caption families: (images, token ids [B, T]) pairs),
    consumed in order; holes: bool [>= total, 1, H, W]. Returns ({method: summary}, preview) where
    summary holds the metric means, per-bucket means and, with an extractor, fid / kid / kid_std;
    preview [4 * k, 3, H, W] is original | model input | model | telea for the first k images.
    """
    captions = exported.family.captions
    methods = METHODS + ((SHUFFLED_CAPTION,) if captions else ())
    per_image = {method: defaultdict(list) for method in methods}
    features = defaultdict(list)
    buckets, preview, start = [], None, 0
    for batch, tokens, shuffled in _with_shuffled_captions(batches, captions):
        images = batch.to(device).float() / 255
        hole_mask = holes[start : start + len(batch)].to(device).float()
        start += len(batch)
        completed = _complete(exported, images, hole_mask, tokens, device)
        filled = {"model": completed, **classical_fills(images, hole_mask, mean_rgb)}
        if shuffled is not None:
            filled[SHUFFLED_CAPTION] = _complete(exported, images, hole_mask, shuffled, device)
        for method, result in filled.items():
            for name, values in image_metrics(result, images, hole_mask).items():
                per_image[method][name].append(values)
        buckets.append(area_bucket(hole_mask))
        if extractor is not None:
            for name, result in (("real", images), *filled.items()):
                features[name].append(extractor(result))
        if preview is None:
            shown = slice(0, PREVIEW_IMAGES)
            # each image's fill is its own: fill only the shown ones again
            model_input = exported.hole_fill.to(device)(images[shown], hole_mask[shown])
            columns = [images[shown], model_input, completed[shown], filled["telea"][shown]]
            preview = torch.stack(columns, 1).flatten(0, 1).cpu()
    if start == 0:
        raise UserError("no images to evaluate")
    all_buckets = torch.cat(buckets)
    results = {}
    for method in methods:
        values = {name: torch.cat(parts) for name, parts in per_image[method].items()}
        results[method] = summarize(values, all_buckets)
    if extractor is not None:
        real = torch.cat(features["real"])
        for method in methods:
            fake = torch.cat(features[method])
            kid, kid_std = kernel_inception_distance(real, fake)
            results[method] |= {"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std}
    return results, preview


def _check_inputs(
    run: str, shards: str, count: int, batch_size: int, inception: str | None
) -> None:
    if not Path(run).is_dir():
        raise UserError(f"run directory not found: {run}")
    if not is_remote(shards) and not Path(shards).is_dir():  # a URL: read with retries
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
    from ganpaint.data.captions import CaptionTokens
    from ganpaint.data.stream import held_out_split, iterate_split, read_manifest

    _check_inputs(run, shards, count, batch_size, inception)
    torch_device = resolve_device(device)
    exported = open_model(run, torch_device, inpainting=True)
    config = exported.config
    image_px = config.data.image_px
    extractor = load_inception(inception, torch_device) if inception else None
    mean_rgb = torch.tensor(read_manifest(shards)["mean_rgb"], dtype=torch.float32)
    mask_config, mask_name = eval_masks(config.masks, masks, exported.family)
    wanted = split
    split = held_out_split(shards, split)
    if split != wanted:
        print(f"note: split {wanted!r} of {mask(shards)} is empty: scoring split {split!r}")
    folder = Path(run) / "eval"  # beside the run, wherever the command is run from
    holes_path = folder / f"holes-{mask_name}-{image_px}px-{count}-seed{seed}.pt"
    holes, reused = load_or_draw_hole_set(holes_path, mask_config, count, image_px, seed)
    print(f"holes: {'reused' if reused else 'saved'} {holes_path}")
    tokens_of = None
    if exported.family.captions:  # the images' first captions, by the model's own tokenizer
        tokens_of = CaptionTokens(exported.tokenizer, config.data.caption_tokens)
    batches = iterate_split(shards, split, image_px, batch_size, count, tokens_of)
    results, preview = evaluate(exported, mean_rgb, batches, holes, torch_device, extractor)
    evaluated = results["model"]["buckets"]
    image_count = sum(bucket["count"] for bucket in evaluated.values())
    if image_count < count:
        print(
            f"note: split {split!r} of {mask(shards)} holds {image_count} images, fewer than "
            f"--count {count}"
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
    text = json.dumps(report, indent=2) + "\n"
    for path in filter(
        None, (folder / f"results-{mask_name}-{split}-{count}-seed{seed}.json", json_out)
    ):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomically(path, text)
        print(f"results: {path}")
    return 0
