"""FID and KID: Inception pool3 features from a local weights file; the distances by torchmetrics.

Nothing is downloaded: the user passes a local inception_v3 weights file (torchvision's
`inception_v3_google-*.pth`, or pytorch-fid's `pt_inception-2015-12-05-*.pth`, or either as
safetensors). The distances take any [N, D] features, so tests inject a tiny extractor.

pytorch-fid's weights are loaded into torchvision's inception_v3; pytorch-fid also swaps the
pooling of a few blocks to mimic the TensorFlow graph, which we do not, so FID from those weights
is close to, not identical with, the numbers papers report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

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


class _Precomputed(nn.Module):
    """torchmetrics' "feature extractor" for features we already extracted: the identity.

    Each image set goes through the (slow) Inception net once in `evaluate`; the real images'
    features then serve every method's FID and KID.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """FID's ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two [N, D] feature sets
    (N >= 2), computed by torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(features_a.shape[1]))
    metric.update(features_a.double().cpu(), real=True)
    metric.update(features_b.double().cpu(), real=False)
    return float(metric.compute())


def kernel_inception_distance(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    subset_size: int = KID_SUBSET_SIZE,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018), computed by torchmetrics: mean and std of the unbiased
    polynomial MMD^2, k(u, v) = (u.v / D + 1)^3, over random subsets drawn from `seed`.

    Features [N, D] (N >= 2). When both sets fit in one subset, it is computed once on all of them.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(features_a), len(features_b))
    whole = size == len(features_a) == len(features_b)
    with warnings.catch_warnings():  # "will save all extracted features": that is the point
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=_Precomputed(features_a.shape[1]),
            subsets=1 if whole else subsets,
            subset_size=size,
        )
    metric.update(features_a.double().cpu(), real=True)
    metric.update(features_b.double().cpu(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # torchmetrics draws the subsets from the global generator
        mean, std = metric.compute()
    return float(mean), 0.0 if whole else float(std)
