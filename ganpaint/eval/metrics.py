"""Image-quality metrics over the hole and over the whole image: PSNR, SSIM, L1, per hole-area bucket.

Every function takes batched tensors on any device and returns one value per image ([N] tensors),
so a caller averages over a data set without host syncs. Images are float RGB [N, 3, H, W] in
[0, 1]; a `region` is a float or bool mask [N, 1, H, W] with 1 on the pixels that count (the hole,
or None for the whole image).
"""

from __future__ import annotations

import torch
from torch.nn import functional

# Wang et al. 2004 constants, and the 11-tap gaussian window (sigma 1.5, truncated at 3.5 sigma)
# that skimage.metrics.structural_similarity uses with gaussian_weights=True.
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_SIGMA = 1.5
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)

# Upper edges of the hole-area buckets, as fractions of the image; the last bucket is open.
AREA_EDGES = (0.1, 0.2, 0.3)

# PSNR of a perfect reconstruction is infinite; this floor on the MSE caps it at 100 dB so means
# over a data set stay finite.
MIN_MSE = 1e-10


def _region_mean(values: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """Mean of [N, C, H, W] values over the region's pixels and all channels -> [N]."""
    if region is None:
        return values.flatten(1).mean(1)
    region = region.to(values.dtype).expand_as(values)
    return (values * region).flatten(1).sum(1) / region.flatten(1).sum(1).clamp_min(1)


def psnr(
    prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (peak 1.0) over the region's pixels -> [N]."""
    mse = _region_mean((prediction.float() - target.float()).square(), region)
    return -10 * torch.log10(mse.clamp_min(MIN_MSE))


def l1(
    prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean absolute error over the region's pixels and channels -> [N], in [0, 1]."""
    return _region_mean((prediction.float() - target.float()).abs(), region)


def _gaussian_window(device: torch.device) -> torch.Tensor:
    offsets = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, device=device, dtype=torch.float32)
    weights = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return weights / weights.sum()


def _symmetric_pad(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad H and W by mirroring with the edge pixel repeated (scipy.ndimage mode 'reflect')."""
    for dim in (-2, -1):
        before = images.narrow(dim, 0, pad).flip(dim)
        after = images.narrow(dim, images.shape[dim] - pad, pad).flip(dim)
        images = torch.cat([before, images, after], dim)
    return images


def _blur(images: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable gaussian blur of [B, C, H, W], same size out (symmetric padding)."""
    channels = images.shape[1]
    padded = _symmetric_pad(images, SSIM_RADIUS)
    rows = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    columns = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    blurred = functional.conv2d(padded, rows, groups=channels)
    return functional.conv2d(blurred, columns, groups=channels)


def ssim_map(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004, gaussian window, data range 1) -> [N, 1, H, W].

    Computed per channel and averaged over channels; equal to skimage's full SSIM image with
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1. H, W >= 11.
    """
    x, y = prediction.float(), target.float()
    window = _gaussian_window(x.device)
    # One blur call for all five moments keeps it to two convolutions on the device.
    moments = _blur(torch.cat([x, y, x * x, y * y, x * y], 1), window)
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = moments.chunk(5, 1)
    var_x = mean_xx - mean_x.square()
    var_y = mean_yy - mean_y.square()
    covariance = mean_xy - mean_x * mean_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x.square() + mean_y.square() + c1) * (var_x + var_y + c2)
    return (numerator / denominator).mean(1, keepdim=True)


def _mean_ssim(pixels: torch.Tensor, region: torch.Tensor | None) -> torch.Tensor:
    """Average an SSIM map over the region; for the whole image, over the interior a window
    fits in without padding, as skimage reports it."""
    if region is None:
        pixels = pixels[..., SSIM_RADIUS:-SSIM_RADIUS, SSIM_RADIUS:-SSIM_RADIUS]
    return _region_mean(pixels, region)


def ssim(
    prediction: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """SSIM map averaged over the region's pixels (the whole image's interior when None) -> [N]."""
    return _mean_ssim(ssim_map(prediction, target), region)


def image_metrics(
    completed: torch.Tensor, target: torch.Tensor, hole_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """PSNR, SSIM and L1 over the hole and over the whole image, each [N] (one per image)."""
    ssim_pixels = ssim_map(completed, target)
    return {
        "hole_psnr": psnr(completed, target, hole_mask),
        "hole_ssim": _mean_ssim(ssim_pixels, hole_mask),
        "hole_l1": l1(completed, target, hole_mask),
        "image_psnr": psnr(completed, target),
        "image_ssim": _mean_ssim(ssim_pixels, None),
        "image_l1": l1(completed, target),
    }


def hole_area(hole_mask: torch.Tensor) -> torch.Tensor:
    """Fraction of each image inside the hole, [N] in [0, 1]."""
    return hole_mask.float().flatten(1).mean(1)


def bucket_names() -> list[str]:
    """Labels of the hole-area buckets: '<10%', '10-20%', ..., '>=30%'."""
    percents = [round(edge * 100) for edge in AREA_EDGES]
    names = [f"<{percents[0]}%"]
    names += [f"{low}-{high}%" for low, high in zip(percents, percents[1:], strict=False)]
    return names + [f">={percents[-1]}%"]


def area_bucket(hole_mask: torch.Tensor) -> torch.Tensor:
    """Index into bucket_names() of each image's hole area, [N] int64."""
    edges = torch.tensor(AREA_EDGES, device=hole_mask.device)
    return torch.bucketize(hole_area(hole_mask), edges, right=True)


def summarize(per_image: dict[str, torch.Tensor], buckets: torch.Tensor) -> dict:
    """Means over all images and per hole-area bucket, as plain floats (NaN-free: empty buckets
    are left out). `per_image` maps metric -> [N]; `buckets` is area_bucket's [N] output."""
    summary = {name: float(values.mean()) for name, values in per_image.items()}
    by_bucket = {}
    for index, label in enumerate(bucket_names()):
        members = buckets == index
        count = int(members.sum())
        if count:
            by_bucket[label] = {"count": count} | {
                name: float(values[members].mean()) for name, values in per_image.items()
            }
    summary["buckets"] = by_bucket
    return summary
