"""`ganpaint inpaint`: fill the holes of users' images of any size, with optional Poisson blending.

The net runs on a window around each group of holes (`ganpaint.infer.windows`), at the scale it was
trained at: a 2560 x 1600 photo with a brushed hole costs a few hundred pixels of net, and a hole
thicker than the trained ones is shrunk to their scale and the prediction resized back. glcic nets
are fully convolutional: the window is reflect-padded to a multiple of 4 and cropped back.
context_encoder / wgan_unet nets see a square twice the hole's side, centred on it and resized to
their image_px, and predict its centre square. Caption models (`--caption "a red bus on a
street"`) fill the hole to match the text, encoded by the tokenizer saved with their export.

Post-processing follows GLCIC (Iizuka et al. 2017): fast marching (Telea) fills the hole of the
original, then the gradients of the net's output are Poisson-blended (cv2.seamlessClone,
NORMAL_CLONE) into it over the slightly dilated hole, window by window. Whatever the path, pixels
outside the hole are returned bit-identical, the alpha channel is kept and greyscale images come
back greyscale. Images above --max-megapixels are refused from their header, before decoding.

Image and mask are read as a viewer shows them (`ganpaint.infer.images`): turned by their EXIF
orientation, so a mask drawn over a phone photo as shown fits it and the output is written upright
(with no orientation tag to turn it again); 16-bit images are filled and written at 8 bits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional

from ganpaint.errors import UserError
from ganpaint.infer.blend import poisson_blend
from ganpaint.infer.export import Exported
from ganpaint.infer.images import DEFAULT_MAX_MEGAPIXELS, read_image, write_image
from ganpaint.infer.runs import open_model, resolve_device
from ganpaint.infer.windows import Window, net_geometry, plan_windows

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")

# fill(rgb [H, W, 3] uint8, hole [H, W] bool, window) -> uint8 [h, w, 3] over the window's part of
# the photo; only its hole pixels are used.
WindowFill = Callable[[np.ndarray, np.ndarray, Window], np.ndarray]


def parse_rect(rect: str, height: int, width: int, image: Path) -> np.ndarray:
    """'X,Y,W,H' -> bool hole [height, width]. UserError for a malformed or out-of-bounds rect."""
    try:
        x, y, w, h = (int(part) for part in rect.split(","))
    except ValueError:
        raise UserError(f"--rect {rect!r}: expected X,Y,W,H as four integers") from None
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise UserError(f"--rect {rect!r}: outside {image} ({width}x{height} px) or empty")
    hole = np.zeros((height, width), bool)
    hole[y : y + h, x : x + w] = True
    return hole


def hole_from_mask(grey: np.ndarray, height: int, width: int, source: str) -> np.ndarray:
    """Grey mask pixels -> bool hole [height, width]: pixels brighter than 127 are the hole."""
    if grey.shape != (height, width):
        raise UserError(
            f"{source}: mask is {grey.shape[1]}x{grey.shape[0]} px, image is {width}x{height}"
        )
    return grey > 127


def check_hole(hole: np.ndarray, source: str) -> None:
    if not hole.any():
        raise UserError(f"{source}: empty mask (no pixel > 127 marks a hole)")
    if hole.all():
        raise UserError(f"{source}: the whole image is hole; nothing to complete from")


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> uint8 [H, W, 3]."""
    return (images[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _to_tensor(pixels: np.ndarray, exported: Exported) -> torch.Tensor:
    """uint8 [H, W, C] -> [1, C, H, W] in [0, 1] on the generator's device."""
    device = next(exported.generator.parameters()).device
    return torch.from_numpy(pixels).to(device).permute(2, 0, 1)[None].float() / 255


def caption_tokens(exported: Exported, caption: str | None) -> torch.Tensor | None:
    """Token ids [1, T] of a caption for a caption model (which needs one); None otherwise.
    UserError (one line) for a caption missing or given to a model that takes none."""
    name = exported.family.name
    if not exported.family.captions:
        if caption is not None:
            raise UserError(f"--caption: a {name} model is not conditioned on captions")
        return None
    if caption is None:
        raise UserError(f'{name} is conditioned on captions: pass --caption "what the image shows"')
    return exported.encode_captions([caption])


def run_net(
    exported: Exported, image: torch.Tensor, hole_mask: torch.Tensor, caption: str | None
) -> torch.Tensor:
    """The one call into a generator at inference: [1, 3, H, W] prediction, not composited.

    Caption-conditioned families receive the caption's tokens."""
    return exported.complete(image, hole_mask, caption_tokens(exported, caption))[0]


def _predict_convolutional(
    exported: Exported, image: torch.Tensor, hole_mask: torch.Tensor, caption: str | None
) -> torch.Tensor:
    """Fully convolutional net, its input reflect-padded to a multiple of the family's
    `size_multiple`."""
    height, width = image.shape[-2:]
    multiple = exported.family.size_multiple
    pad = (0, -width % multiple, 0, -height % multiple)
    # Mirror the mask with the image, so mirrored hole content is never shown to the net.
    mode = "reflect" if min(height, width) > multiple else "replicate"
    padded_image = functional.pad(image, pad, mode=mode)
    padded_hole = functional.pad(hole_mask, pad, mode=mode)
    return run_net(exported, padded_image, padded_hole, caption)[..., :height, :width]


def _predict_centre(
    exported: Exported, image: torch.Tensor, hole_mask: torch.Tensor, caption: str | None
) -> torch.Tensor:
    """Centre-square net: the hole it was trained on is the centre square (less the overlap band
    a Context Encoder sees as context); any mirrored copy of the user's hole outside it is filled
    too, so content under the hole never shows."""
    side, centre = image.shape[-1], exported.config.masks.hole_max_px
    offset = (side - centre) // 2
    centre_hole = hole_mask.clone()
    centre_hole[..., offset : offset + centre, offset : offset + centre] = 1
    return run_net(exported, image, centre_hole, caption)


def predict_window(
    exported: Exported, rgb: np.ndarray, hole: np.ndarray, window: Window, caption: str | None
) -> np.ndarray:
    """The net's raw prediction over the window's part of uint8 RGB [H, W, 3] with bool hole [H, W].

    uint8 [h, w, 3] for the window's part inside the photo, not yet composited: known pixels hold
    the net's reconstruction (for centre nets, inside the centre square only), which the Poisson
    blend reads gradients from. The window is mirrored where it leaves the photo, resized to the
    net's scale and the prediction resized back.
    """
    height, width = hole.shape
    rows, columns = window.inside(height, width)
    pads = (
        rows.start - window.top,
        window.bottom - rows.stop,
        columns.start - window.left,
        window.right - columns.stop,
    )
    crop = cv2.copyMakeBorder(rgb[rows, columns], *pads, cv2.BORDER_REFLECT_101)
    crop_hole = cv2.copyMakeBorder(
        hole[rows, columns].astype(np.uint8), *pads, cv2.BORDER_REFLECT_101
    )
    crop_size = (crop.shape[1], crop.shape[0])
    net_size = (
        max(1, round(crop_size[0] * window.scale)),
        max(1, round(crop_size[1] * window.scale)),
    )
    if net_size != crop_size:
        shrink = window.scale < 1
        crop = cv2.resize(
            crop, net_size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
        )
        # any hole in a net pixel makes it hole: nothing under the user's hole leaks into the input
        crop_hole = (
            cv2.resize(crop_hole.astype(np.float32), net_size, interpolation=cv2.INTER_AREA) > 0
        )
    image = _to_tensor(crop, exported)
    hole_mask = _to_tensor(crop_hole[..., None].astype(np.uint8) * 255, exported)
    predict = _predict_centre if exported.family.predicts_center else _predict_convolutional
    prediction = tensor_to_uint8(predict(exported, image, hole_mask, caption))
    if net_size != crop_size:
        prediction = cv2.resize(prediction, crop_size, interpolation=cv2.INTER_CUBIC)
    return prediction[
        pads[0] : pads[0] + rows.stop - rows.start, pads[2] : pads[2] + columns.stop - columns.start
    ]


def fill_pixels(
    pixels: np.ndarray, hole: np.ndarray, windows: list[Window], fill: WindowFill
) -> np.ndarray:
    """Fill the holes of one decoded image (grey [H, W], BGR or BGRA [H, W, 3|4], uint8), window
    by window, each from the original pixels. Same layout out; only hole pixels change."""
    grey = pixels.ndim == 2
    bgr = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if grey else pixels[..., :3]
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    filled = rgb.copy()
    for window in windows:
        box = window.inside(*hole.shape)
        box_hole = hole[box]
        filled[box][box_hole] = fill(rgb, hole, window)[box_hole]
    filled = cv2.cvtColor(filled, cv2.COLOR_RGB2GRAY if grey else cv2.COLOR_RGB2BGR)
    result = pixels.copy()
    if grey:
        result[hole] = filled[hole]
    else:
        result[..., :3][hole] = filled[hole]
    return result


def model_fill(
    exported: Exported, blend: str, source: str, caption: str | None = None
) -> WindowFill:
    """The net's fill of one window, Poisson-blended into the window's pixels unless blend='none'."""

    def fill(rgb: np.ndarray, hole: np.ndarray, window: Window) -> np.ndarray:
        with torch.no_grad():
            prediction = predict_window(exported, rgb, hole, window, caption)
        if blend == "poisson":
            box = window.inside(*hole.shape)
            prediction = poisson_blend(prediction, rgb[box], hole[box], source)
        return prediction

    return fill


def inpaint_pixels(
    exported: Exported,
    pixels: np.ndarray,
    hole: np.ndarray,
    blend: str,
    source: str,
    caption: str | None = None,
) -> np.ndarray:
    """Inpaint one decoded image with the net (see fill_pixels), on windows around its holes."""
    windows = plan_windows(hole, net_geometry(exported), source)
    return fill_pixels(pixels, hole, windows, model_fill(exported, blend, source, caption))


# Below this scale a hole is more than twice the size of the trained ones: the fill is made at a
# coarse scale and resized back, and looks blurred.
WARN_BELOW_SCALE = 0.5


def _warn_if_beyond_training(exported: Exported, hole: np.ndarray, source: str) -> None:
    windows = plan_windows(hole, net_geometry(exported), source)
    smallest = min(window.scale for window in windows)
    if smallest < WARN_BELOW_SCALE:
        print(
            f"warning: {source}: a hole is {1 / smallest:.1f}x the size of those the model was "
            f"trained on (masks.hole_max_px={exported.config.masks.hole_max_px}): it is filled "
            "at the trained scale and resized, so expect a blurred fill",
            file=sys.stderr,
        )


def _match_mask(mask: str | None, image: Path) -> Path | None:
    """The mask for `image`: the --mask file, or the file with the image's stem in a --mask folder."""
    if mask is None:
        return None
    folder = Path(mask)
    if not folder.is_dir():
        return folder
    matches = sorted(
        p for p in folder.iterdir() if p.stem == image.stem and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not matches:
        raise UserError(f"{folder}: no mask named {image.stem}.* for {image}")
    return matches[0]


def plan_jobs(image: str, mask: str | None, output: str) -> list[tuple[Path, Path | None, Path]]:
    """(image, mask or None, output) per image. A folder of images writes PNGs into a folder."""
    source, target = Path(image), Path(output)
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)})")
        if target.exists() and not target.is_dir():
            raise UserError(f"--output {target}: must be a directory when --image is one")
        return [(path, _match_mask(mask, path), target / f"{path.stem}.png") for path in images]
    if not source.is_file():
        raise UserError(f"image not found: {source}")
    if target.is_dir() or output.endswith(("/", "\\")):
        target = target / f"{source.stem}.png"
    return [(source, _match_mask(mask, source), target)]


def inpaint_command(
    run: str | None,
    weights: str | None,
    image: str,
    mask: str | None,
    rect: str | None,
    output: str,
    blend: str,
    device: str,
    caption: str | None = None,
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
) -> int:
    """Inpaint IMAGE (file or folder) where MASK is white or inside RECT; write OUTPUT. Caption
    models fill the hole to match CAPTION."""
    jobs = plan_jobs(image, mask, output)
    exported = open_model(run or weights, resolve_device(device), inpainting=True)
    caption_tokens(exported, caption)  # a missing or unexpected caption fails before any work
    for image_path, mask_path, output_path in jobs:
        if output_path.resolve() == image_path.resolve():
            raise UserError(f"--output {output_path}: would overwrite the input image")
        pixels = read_image(image_path, max_megapixels=max_megapixels)
        height, width = pixels.shape[:2]
        if mask_path is None:
            hole, hole_source = parse_rect(rect, height, width, image_path), f"--rect {rect}"
        else:
            grey = read_image(mask_path, cv2.IMREAD_GRAYSCALE, max_megapixels)
            hole, hole_source = hole_from_mask(grey, height, width, str(mask_path)), str(mask_path)
        check_hole(hole, hole_source)
        _warn_if_beyond_training(exported, hole, str(image_path))
        filled = inpaint_pixels(exported, pixels, hole, blend, str(image_path), caption)
        write_image(output_path, filled)
        lossy = output_path.suffix.lower() in LOSSY_SUFFIXES
        print(
            f"{image_path} -> {output_path}"
            + (" (lossy format: known pixels re-encoded)" if lossy else "")
        )
    return 0
