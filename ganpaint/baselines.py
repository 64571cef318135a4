"""The classical fills every model is judged against, and the line that names the best of them.

The mean colour (the GLCIC paper's input fill), OpenCV's Telea inpainting, the pyramid (push-pull)
fill, the harmonic (Laplace, membrane) fill, the biharmonic (thin-plate) fill and the spline in
tension between them (`completion.TENSION`). All return
completed images in the evaluation's layout (float RGB [N, 3, H, W] in [0, 1], hole mask
[N, 1, H, W] with 1 = hole) with the known pixels untouched, so their metrics sit beside the
model's on the same holes.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ganpaint.completion import (
    biharmonic_fill,
    fill_holes,
    harmonic_fill,
    pyramid_fill,
    tension_fill,
)

# Telea's neighbourhood radius in pixels; 3-5 is the usual range and the GLCIC post-processing's.
TELEA_RADIUS = 3
BASELINES = {  # result key -> label
    "mean_fill": "mean fill",
    "telea": "Telea",
    "pyramid_fill": "pyramid fill",
    "harmonic_fill": "harmonic fill",
    "biharmonic_fill": "biharmonic fill",
    "tension_fill": "tension fill",
}


def mean_fill(
    images: torch.Tensor, hole_mask: torch.Tensor, mean_rgb: torch.Tensor
) -> torch.Tensor:
    """The hole painted in one colour: the training set's mean, [3] in [0, 1]."""
    return fill_holes(images, hole_mask, mean_rgb)


def telea_inpaint_uint8(
    image_rgb: np.ndarray, hole: np.ndarray, radius: int = TELEA_RADIUS
) -> np.ndarray:
    """cv2.inpaint (Telea's fast marching) of one uint8 [H, W, 3] image; hole uint8/bool [H, W]."""
    return cv2.inpaint(image_rgb, hole.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def telea_fill(
    images: torch.Tensor, hole_mask: torch.Tensor, radius: int = TELEA_RADIUS
) -> torch.Tensor:
    """Telea inpainting of each image (on the CPU: OpenCV), composited over the known pixels.

    The images are quantised to uint8 for OpenCV; only the hole takes the quantised result, so
    known pixels keep their exact values.
    """
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    holes = (hole_mask[:, 0] > 0.5).cpu().numpy()
    filled = np.stack(
        [
            telea_inpaint_uint8(image, hole, radius)
            for image, hole in zip(pixels, holes, strict=True)
        ]
    )
    telea = torch.from_numpy(filled).to(images.device).permute(0, 3, 1, 2).to(images.dtype) / 255
    return images * (1 - hole_mask) + telea * hole_mask


def classical_fills(
    images: torch.Tensor, hole_mask: torch.Tensor, mean_rgb: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Every baseline's completion of the images, keyed as `BASELINES`."""
    return {
        "mean_fill": mean_fill(images, hole_mask, mean_rgb.to(images.device)),
        "telea": telea_fill(images, hole_mask),
        "pyramid_fill": pyramid_fill(images, hole_mask),
        "harmonic_fill": harmonic_fill(images, hole_mask),
        "biharmonic_fill": biharmonic_fill(images, hole_mask).clamp(0, 1),
        "tension_fill": tension_fill(images, hole_mask).clamp(0, 1),
    }


def best_baseline(results: dict[str, dict[str, float]], metric: str = "hole_psnr") -> str:
    """The key of the classical fill with the highest `metric` among `results`."""
    return max((key for key in BASELINES if key in results), key=lambda key: results[key][metric])


def versus_best(results: dict[str, dict[str, float]], model: str = "model") -> str:
    """One line: the model's hole PSNR and SSIM beside the best classical fill's (by PSNR).

    results maps method -> {"hole_psnr": dB, "hole_ssim": ...}, with `model` and the baselines.
    """
    best = best_baseline(results)
    ours, theirs = results[model], results[best]
    return (
        f"hole PSNR {ours['hole_psnr']:.2f} dB model vs {theirs['hole_psnr']:.2f} dB "
        f"{BASELINES[best]}, the best classical fill ({ours['hole_psnr'] - theirs['hole_psnr']:+.2f}"
        f" dB); hole SSIM {ours['hole_ssim']:.4f} vs {theirs['hole_ssim']:.4f} "
        f"({ours['hole_ssim'] - theirs['hole_ssim']:+.4f})"
    )
