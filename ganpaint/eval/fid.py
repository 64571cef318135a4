"""FID and KID: Inception pool3 features from a local weights file, Fréchet distance, polynomial MMD.

Nothing is downloaded: the user passes a local inception_v3 weights file (torchvision's
`inception_v3_google-*.pth`, or pytorch-fid's `pt_inception-2015-12-05-*.pth`, or either as
safetensors). The distances take any [N, D] features, so tests inject a tiny extractor.

pytorch-fid's weights are loaded into torchvision's inception_v3; pytorch-fid also swaps the
pooling of a few blocks to mimic the TensorFlow graph, which we do not, so FID from those weights
is close to, not identical with, the numbers papers report.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from ganpaint.errors import UserError

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]  # [N, 3, H, W] in [0, 1] -> [N, D]

INCEPTION_PX = 299
KID_SUBSET_SIZE = 1000  # the KID paper's subset size; smaller sets use all their samples
KID_SUBSETS = 100


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_inception(path: str | Path, device: str | torch.device = "cpu") -> FeatureExtractor:
    """An extractor of 2048-d pool3 features from a local inception_v3 weights file.

    The returned function takes images [N, 3, H, W] in [0, 1] (any size: resized to 299 px) and
    returns float32 features [N, 2048] on the images' device. Raises UserError for a missing or
    unsuitable file.
    """
    from torchvision.models import inception_v3

    path = Path(path)
    if not path.is_file():
        raise UserError(f"Inception weights file not found: {path}")
    try:
        state = _read_state(path)
        fc_weight = state["fc.weight"]
    except Exception as error:
        raise UserError(
            f"{path}: not an inception_v3 weights file ({type(error).__name__})"
        ) from None
    net = inception_v3(
        weights=None,
        aux_logits=any(name.startswith("AuxLogits.") for name in state),
        init_weights=False,
        num_classes=fc_weight.shape[0],  # 1000 (torchvision) or 1008 (pytorch-fid's TF port)
        transform_input=False,  # we scale to [-1, 1] ourselves, which both weight sets expect
    )
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise UserError(f"{path}: does not fit torchvision's inception_v3 ({first_line})") from None
    net.fc = nn.Identity()  # the forward pass then ends at the 2048-d average pool (pool3)
    net = net.to(device).eval()

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        resized = functional.interpolate(
            images.float(), size=(INCEPTION_PX, INCEPTION_PX), mode="bilinear", align_corners=False
        )
        return net(resized * 2 - 1).float()

    return extract


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two [N, D] feature sets (N >= 2)."""
    from scipy import linalg

    a = features_a.double().cpu().numpy()
    b = features_b.double().cpu().numpy()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():
        # Near-singular products (few samples, D = 2048): regularise as the FID reference code does.
        offset = np.eye(cov_a.shape[0]) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    root = root.real  # rounding leaves tiny imaginary parts
    distance = (
        np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root)
    )
    return float(distance)


def _unbiased_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 with the kernel k(u, v) = (u.v / D + 1)^3, x and y [M, D]."""
    size, dims = x.shape
    k_xx = (x @ x.T / dims + 1) ** 3
    k_yy = (y @ y.T / dims + 1) ** 3
    k_xy = (x @ y.T / dims + 1) ** 3
    off_diagonal = size * (size - 1)
    within = (
        k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
    ) / off_diagonal
    return within - 2 * k_xy.mean()


def kernel_inception_distance(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    subset_size: int = KID_SUBSET_SIZE,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): mean and std of the unbiased polynomial MMD^2 over subsets.

    Features [N, D] (N >= 2). When both sets fit in one subset, it is computed once on all of them.
    """
    a, b = features_a.double(), features_b.double()
    size = min(subset_size, len(a), len(b))
    if size == len(a) == len(b):
        return float(_unbiased_mmd2(a, b)), 0.0
    generator = torch.Generator().manual_seed(seed)
    values = torch.stack(
        [
            _unbiased_mmd2(
                a[torch.randperm(len(a), generator=generator)[:size].to(a.device)],
                b[torch.randperm(len(b), generator=generator)[:size].to(b.device)],
            )
            for _ in range(subsets)
        ]
    )
    return float(values.mean()), float(values.std())
