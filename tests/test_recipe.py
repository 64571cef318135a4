"""The quality options: harmonic fill, net input fills, residual generators, dilation rates, and
the classical baselines every report puts beside the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional

from ganpaint import config as config_lib
from ganpaint.completion import (
    complete,
    fill_holes,
    harmonic_fill,
    prefill,
    pyramid_fill,
)
from ganpaint.config import ConfigError, ModelConfig
from ganpaint.eval.baselines import best_baseline, versus_best
from ganpaint.eval.evaluate import evaluate
from ganpaint.eval.metrics import psnr
from ganpaint.models import build_nets, example_inputs
from ganpaint.models.glcic import CompletionNet
from ganpaint.models.summary import count_parameters
from ganpaint.train.loop import train

ROOT = Path(__file__).parent.parent
INPAINTING = {"glcic": (32, 16), "context_encoder": (32, 16), "wgan_unet": (32, 16)}


def _square_hole(count: int, side: int, top: int, size: int) -> torch.Tensor:
    hole_mask = torch.zeros(count, 1, side, side)
    hole_mask[..., top : top + size, top : top + size] = 1
    return hole_mask


def _jacobi_reference(images: torch.Tensor, hole_mask: torch.Tensor, sweeps: int) -> torch.Tensor:
    """The harmonic fill by brute force: many plain Jacobi sweeps from the mean colour."""
    filled = fill_holes(images, hole_mask, torch.full((3,), 0.5))
    for _ in range(sweeps):
        padded = functional.pad(filled, (1, 1, 1, 1), mode="replicate")
        neighbours = (
            padded[..., :-2, 1:-1]
            + padded[..., 2:, 1:-1]
            + padded[..., 1:-1, :-2]
            + padded[..., 1:-1, 2:]
        ) / 4
        filled = images * (1 - hole_mask) + neighbours * hole_mask
    return filled


# ---- fills ------------------------------------------------------------------------------------


def test_harmonic_fill_keeps_known_pixels_and_solves_laplace():
    generator = torch.Generator().manual_seed(0)
    images = functional.avg_pool2d(torch.rand(2, 3, 36, 36, generator=generator), 5, 1)
    hole_mask = _square_hole(2, 32, 8, 14)
    filled = harmonic_fill(images, hole_mask)
    assert torch.equal(filled * (1 - hole_mask), images * (1 - hole_mask))
    reference = _jacobi_reference(images, hole_mask, 600)  # converged: 0.978 ** 600 < 1e-5
    assert (harmonic_fill(images, hole_mask, iterations=40) - reference).abs().max() < 1e-3
    assert (filled - reference).abs().max() < 0.03  # the default 8 sweeps at 32 px: 0.018
    assert (pyramid_fill(images, hole_mask) - reference).abs().max() > 0.05


def test_harmonic_fill_recovers_a_ramp_better_than_the_pyramid_fill():
    # a ramp is harmonic: the fill should reproduce it; push-pull averages it into blocks
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(2, 3, 64, 64).contiguous()
    hole_mask = _square_hole(2, 64, 20, 24)
    harmonic = float(psnr(harmonic_fill(ramp, hole_mask), ramp, hole_mask).mean())
    pyramid = float(psnr(pyramid_fill(ramp, hole_mask), ramp, hole_mask).mean())
    assert harmonic > pyramid + 10, (harmonic, pyramid)  # measured: 48.7 vs 33.6 dB


def test_prefill_chooses_the_configured_fill():
    images, hole_mask = torch.rand(2, 3, 16, 16), _square_hole(2, 16, 4, 6)
    colour = torch.tensor([0.1, 0.2, 0.3])
    assert torch.equal(
        prefill(images, hole_mask, colour, "mean"), fill_holes(images, hole_mask, colour)
    )
    assert torch.equal(
        prefill(images, hole_mask, colour, "pyramid"), pyramid_fill(images, hole_mask)
    )
    assert torch.equal(
        prefill(images, hole_mask, colour, "harmonic"), harmonic_fill(images, hole_mask)
    )


# ---- residual generators and dilations --------------------------------------------------------


@pytest.mark.parametrize("family", list(INPAINTING))
def test_residual_generator_starts_as_its_filled_input_and_learns(family):
    image_px, local_px = INPAINTING[family]
    model = ModelConfig(family=family, width=8, disc_width=8, fc_features=16, residual=True)
    generator = build_nets(model, image_px, local_px).generator
    (images, hole_mask), _ = example_inputs(model, image_px, local_px, batch=3)
    prediction, completed = complete(generator, images, hole_mask, torch.zeros(3), "pyramid")
    assert torch.equal(completed, pyramid_fill(images, hole_mask))
    loss = (completed - images.flip(0)).square().mean()
    loss.backward()
    last = [p for p in generator.parameters() if p.grad is not None and p.ndim == 4][-1]
    assert last.grad.abs().sum() > 0  # the zero layer is not stuck: it learns the correction


@pytest.mark.parametrize("family", list(INPAINTING))
def test_paper_generators_are_not_residual(family):
    image_px, local_px = INPAINTING[family]
    model = ModelConfig(family=family, width=8)
    generator = build_nets(model, image_px, local_px).generator
    (images, hole_mask), _ = example_inputs(model, image_px, local_px, batch=2)
    output = generator(images, hole_mask)
    side = output.shape[-1]
    start = (image_px - side) // 2
    centre = images[..., start : start + side, start : start + side]
    assert not torch.allclose(output, centre, atol=0.05)


def test_dilations_replace_the_dilated_rows_only():
    paper = CompletionNet(8)
    small = CompletionNet(8, dilations=(1, 2, 4, 8))
    rates = [block[0].dilation[0] for block in small.layers]
    assert [rate for rate in rates if rate > 1] == [2, 4, 8]
    assert [block[0].dilation[0] for block in paper.layers if block[0].dilation[0] > 1] == [
        2,
        4,
        8,
        16,
    ]
    assert count_parameters(small) == count_parameters(paper)
    images = torch.rand(1, 3, 32, 32)
    assert small(images, _square_hole(1, 32, 8, 8)).shape == (1, 3, 32, 32)


# ---- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.dilations=[1,2,4]", "model.dilations"),
        ("model.dilations=[0,2,4,8]", "model.dilations"),
        ("model.hole_fill=blur", "model.hole_fill"),
        ("model.residual=maybe", "model.residual"),
    ],
)
def test_bad_recipe_keys_name_the_key_in_one_line(override, key):
    with pytest.raises(ConfigError) as caught:
        config_lib.load(None, [override])
    assert key in str(caught.value) and "\n" not in str(caught.value)


def test_paper_presets_keep_the_papers_fill_output_and_dilations():
    for name in ("glcic_paper", "glcic_celeba", "glcic_coco", "context_encoder_celeba"):
        model = config_lib.load(ROOT / "configs" / f"{name}.yaml").model
        assert (model.hole_fill, model.residual, list(model.dilations)) == (
            "mean",
            False,
            [2, 4, 8, 16],
        ), name


def test_residual_and_dilations_are_model_shaping():
    saved = config_lib.load(None, [])
    changed = config_lib.load(None, ["model.residual=true", "model.dilations=[1,2,4,8]"])
    differences = config_lib.shaping_differences(saved, changed)
    assert any("model.residual" in line for line in differences)
    assert any("model.dilations" in line for line in differences)


# ---- baselines in evaluation and in training --------------------------------------------------


def test_best_baseline_and_versus_line():
    results = {
        "model": {"hole_psnr": 21.0, "hole_ssim": 0.60},
        "mean_fill": {"hole_psnr": 12.0, "hole_ssim": 0.30},
        "telea": {"hole_psnr": 19.5, "hole_ssim": 0.58},
        "harmonic_fill": {"hole_psnr": 20.0, "hole_ssim": 0.59},
    }
    assert best_baseline(results) == "harmonic_fill"
    line = versus_best(results)
    assert "harmonic fill, the best classical fill (+1.00 dB)" in line and "+0.0100" in line


def test_evaluate_scores_every_classical_fill_and_names_the_constant_one(
    synthetic_shards, make_config
):
    from ganpaint.data.stream import iterate_split

    config = make_config(synthetic_shards, **{"model.hole_fill": "zero", "model.residual": True})
    nets = build_nets(config.model, 32, 16)
    batches = list(iterate_split(synthetic_shards, "val", 32, 4, limit=8))
    holes = _square_hole(8, 32, 9, 12).bool()
    results, _ = evaluate(
        nets.generator.eval(),
        torch.zeros(3),
        torch.full((3,), 0.5),
        batches,
        holes,
        torch.device("cpu"),
        hole_fill="zero",
    )
    assert set(results) == {"model", "zero_fill", "telea", "pyramid_fill", "harmonic_fill"}
    # a residual net on the zero fill starts as the zero fill
    assert results["model"]["hole_psnr"] == pytest.approx(results["zero_fill"]["hole_psnr"])
    assert results["harmonic_fill"]["hole_psnr"] > results["zero_fill"]["hole_psnr"]


def test_training_ends_with_the_best_classical_fill_line(synthetic_shards, make_config, capsys):
    config = make_config(
        synthetic_shards,
        **{
            "model.hole_fill": "pyramid",
            "model.residual": True,
            "model.dilations": "[1,2,4,8]",
            "schedule.completion_steps": 2,
            "schedule.discriminator_steps": 1,
            "schedule.total_steps": 4,
            "log.progress": "plain",
        },
    )
    train(config)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("validation: hole PSNR") and "the best classical fill" in last
