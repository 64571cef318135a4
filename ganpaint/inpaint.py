"""`ganpaint inpaint`: fill the holes of users' images of any size, with optional Poisson blending.

glcic nets are fully convolutional: the image is reflect-padded to a multiple of 4 and cropped back.
context_encoder / wgan_unet nets take a fixed image_px input and predict its centre square: the
whole image is resized to image_px, and the prediction for the centre square (the middle half of
the image in each direction) is resized back and pasted into the hole. Their hole must therefore
lie inside that middle half; any other hole is refused with one line.

Post-processing follows GLCIC (Iizuka et al. 2017): fast marching (Telea) fills the hole of the
original, then the gradients of the net's output are Poisson-blended (cv2.seamlessClone,
NORMAL_CLONE) into it over the slightly dilated hole. Whatever the path, pixels outside the hole are returned
bit-identical, the alpha channel is kept and greyscale images come back greyscale.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn import functional

from ganpaint.completion import complete
from ganpaint.errors import UserError
from ganpaint.eval.baselines import telea_inpaint_uint8
from ganpaint.eval.runs import open_model, resolve_device
from ganpaint.export import Exported

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg", ".webp")
NET_MULTIPLE = 4  # the glcic completion net halves the resolution twice
# The Poisson region reaches this far past the hole: OpenCV erodes the clone mask by ~3 px, and
# the rest keeps the solve's boundary on known pixels.
BLEND_MARGIN_PX = 5


def read_image(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Decode an 8-bit image file as OpenCV does (BGR / BGRA / grey). UserError naming the file."""
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    try:
        pixels = cv2.imdecode(np.fromfile(path, np.uint8), flags)
    except cv2.error:
        pixels = None
    if pixels is None:
        raise UserError(f"{path}: not a readable image")
    if pixels.dtype != np.uint8:
        raise UserError(f"{path}: {pixels.dtype} pixels; only 8-bit images are supported")
    return pixels


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


def read_hole(mask: Path, height: int, width: int) -> np.ndarray:
    """Mask file -> bool hole [height, width]: pixels brighter than 127 are the hole."""
    grey = read_image(mask, cv2.IMREAD_GRAYSCALE)
    if grey.shape != (height, width):
        raise UserError(
            f"{mask}: mask is {grey.shape[1]}x{grey.shape[0]} px, image is {width}x{height}"
        )
    return grey > 127


def check_hole(hole: np.ndarray, source: str) -> None:
    if not hole.any():
        raise UserError(f"{source}: empty mask (no pixel > 127 marks a hole)")
    if hole.all():
        raise UserError(f"{source}: the whole image is hole; nothing to complete from")


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """[1, 3, H, W] in [0, 1] -> uint8 [H, W, 3]."""
    return (images[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _to_tensor(rgb: np.ndarray, exported: Exported) -> torch.Tensor:
    """uint8 [H, W, 3] -> [1, 3, H, W] in [0, 1] on the generator's device."""
    device = next(exported.generator.parameters()).device
    return torch.from_numpy(rgb).to(device).permute(2, 0, 1)[None].float() / 255


def _predict_full(exported: Exported, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Fully convolutional net on the whole image, padded to a multiple of NET_MULTIPLE."""
    image = _to_tensor(rgb, exported)
    hole_mask = torch.from_numpy(hole)[None, None].to(image.device).float()
    height, width = hole.shape
    pad = (0, -width % NET_MULTIPLE, 0, -height % NET_MULTIPLE)
    # Mirror the mask with the image, so mirrored hole content is never shown to the net.
    mode = "reflect" if min(height, width) > NET_MULTIPLE else "replicate"
    padded_image = functional.pad(image, pad, mode=mode)
    padded_hole = functional.pad(hole_mask, pad, mode=mode)
    prediction = complete(
        exported.generator,
        padded_image,
        padded_hole,
        exported.fill_rgb.to(image),
        exported.hole_fill,
    )[0]
    return _to_uint8(prediction[..., :height, :width])


def centre_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the middle half of an image: what a centre net predicts."""
    return round(height / 4), round(3 * height / 4), round(width / 4), round(3 * width / 4)


def _predict_centre(
    exported: Exported, rgb: np.ndarray, hole: np.ndarray, source: str
) -> np.ndarray:
    """Centre-square net at its fixed size; its prediction is resized back over the centre box."""
    height, width = hole.shape
    top, bottom, left, right = centre_box(height, width)
    rows, columns = np.nonzero(hole)
    if rows.min() < top or rows.max() >= bottom or columns.min() < left or columns.max() >= right:
        family = exported.config.model.family
        raise UserError(
            f"{source}: {family} fills only the centre square (x {left}..{right - 1}, "
            f"y {top}..{bottom - 1}); this hole reaches outside it"
        )
    image_px, side = exported.config.data.image_px, exported.config.masks.local_px
    shrink = image_px < min(height, width)
    resized = cv2.resize(
        rgb, (image_px, image_px), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    )
    image = _to_tensor(resized, exported)
    offset = (image_px - side) // 2
    hole_mask = torch.zeros_like(image[:, :1])
    hole_mask[..., offset : offset + side, offset : offset + side] = 1
    fill_rgb = exported.fill_rgb.to(image)
    prediction = complete(exported.generator, image, hole_mask, fill_rgb, exported.hole_fill)[0]
    patch = _to_uint8(prediction[..., offset : offset + side, offset : offset + side])
    predicted = rgb.copy()
    predicted[top:bottom, left:right] = cv2.resize(
        patch, (right - left, bottom - top), interpolation=cv2.INTER_CUBIC
    )
    return predicted


def predict_rgb(exported: Exported, rgb: np.ndarray, hole: np.ndarray, source: str) -> np.ndarray:
    """The net's raw prediction for one uint8 RGB [H, W, 3] image with bool hole [H, W].

    uint8 [H, W, 3], not yet composited: known pixels hold the net's own reconstruction (for
    centre nets, inside the centre box only), which the Poisson blend reads gradients from.
    """
    if getattr(exported.generator, "predicts_center", False):
        return _predict_centre(exported, rgb, hole, source)
    return _predict_full(exported, rgb, hole)


def _mirror_pads(region: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that mirrors a border-touching region whole, with a
    clear ring beyond it (capped at the image size: a region spanning the image stays clipped)."""
    height, width = region.shape
    x, y, w, h = cv2.boundingRect(region)
    clear = 2  # OpenCV treats the mask's outer ring as boundary: keep the mirrored region off it

    def pad(touches: bool, extent: int, size: int) -> int:
        return min(extent + clear, size - 1) if touches else clear

    return (
        pad(y == 0, y + h, height),
        pad(y + h == height, height - y, height),
        pad(x == 0, x + w, width),
        pad(x + w == width, width - x, width),
    )


def poisson_blend(
    prediction: np.ndarray, original: np.ndarray, hole: np.ndarray, source: str
) -> np.ndarray:
    """GLCIC post-processing of uint8 RGB [H, W, 3] images -> uint8 [H, W, 3].

    The prediction's gradients are cloned (NORMAL_CLONE) into the original over the slightly
    dilated hole, the surroundings giving the colours: a colour offset between the net and the
    photo is removed instead of left as a seam. Where the hole meets the image border, all three
    arrays are mirrored across it, so the solve sees no boundary there (a zero-flux border) rather
    than OpenCV's clipped region. Telea's fast marching first fills the original's hole, so any
    boundary the solve still reads (a hole spanning the whole image) has plausible colours. If
    OpenCV fails, the prediction comes back unblended with a warning. Only the hole of the result
    is meant to be used.
    """
    hole_u8 = hole.astype(np.uint8) * 255
    background = telea_inpaint_uint8(original, hole_u8)
    region = cv2.dilate(hole_u8, np.ones((3, 3), np.uint8), iterations=BLEND_MARGIN_PX)
    top, bottom, left, right = _mirror_pads(region)

    def mirrored(pixels: np.ndarray) -> np.ndarray:
        return cv2.copyMakeBorder(pixels, top, bottom, left, right, cv2.BORDER_REFLECT_101)

    padded_region = mirrored(region)
    x, y, w, h = cv2.boundingRect(padded_region)
    try:
        blended = cv2.seamlessClone(
            mirrored(prediction),
            mirrored(background),
            padded_region,
            (x + w // 2, y + h // 2),
            cv2.NORMAL_CLONE,
        )
    except cv2.error as error:
        print(
            f"warning: {source}: Poisson blending failed ({str(error).strip().splitlines()[-1]}); not blended"
        )
        return prediction
    height, width = hole.shape
    return blended[top : top + height, left : left + width]


def inpaint_pixels(
    exported: Exported, pixels: np.ndarray, hole: np.ndarray, blend: str, source: str
) -> np.ndarray:
    """Inpaint one decoded image (grey [H, W], BGR or BGRA [H, W, 3|4], uint8), same layout out.

    Only hole pixels change; alpha is never touched.
    """
    grey = pixels.ndim == 2
    bgr = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR) if grey else pixels[..., :3]
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    with torch.no_grad():
        filled = predict_rgb(exported, rgb, hole, source)
    if blend == "poisson":
        filled = poisson_blend(filled, rgb, hole, source)
    filled = cv2.cvtColor(filled, cv2.COLOR_RGB2GRAY if grey else cv2.COLOR_RGB2BGR)
    result = pixels.copy()
    if grey:
        result[hole] = filled[hole]
    else:
        result[..., :3][hole] = filled[hole]
    return result


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


def write_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", pixels)
    except cv2.error:
        ok = False
    if not ok:
        raise UserError(f"{path}: cannot write this image format (use .png)")
    encoded.tofile(path)


def inpaint_command(
    run: str | None,
    weights: str | None,
    image: str,
    mask: str | None,
    rect: str | None,
    output: str,
    blend: str,
    device: str,
) -> int:
    """Inpaint IMAGE (file or folder) where MASK is white or inside RECT; write OUTPUT."""
    jobs = plan_jobs(image, mask, output)
    exported = open_model(run or weights, resolve_device(device), inpainting=True)
    for image_path, mask_path, output_path in jobs:
        if output_path.resolve() == image_path.resolve():
            raise UserError(f"--output {output_path}: would overwrite the input image")
        pixels = read_image(image_path)
        height, width = pixels.shape[:2]
        if mask_path is None:
            hole, hole_source = parse_rect(rect, height, width, image_path), f"--rect {rect}"
        else:
            hole, hole_source = read_hole(mask_path, height, width), str(mask_path)
        check_hole(hole, hole_source)
        write_image(output_path, inpaint_pixels(exported, pixels, hole, blend, str(image_path)))
        lossy = output_path.suffix.lower() in LOSSY_SUFFIXES
        print(
            f"{image_path} -> {output_path}"
            + (" (lossy format: known pixels re-encoded)" if lossy else "")
        )
    return 0
