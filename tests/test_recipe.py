"""The demo recipe's options: residual generators, dilation rates, smooth input fills, and the
report that names the best classical fill. The paper presets keep the paper's choices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from ganpaint import config as config_lib
from ganpaint.baselines import best_baseline, versus_best
from ganpaint.completion import TENSION, HoleFill, complete
from ganpaint.config import ConfigError
from ganpaint.models import build_nets, registry
from ganpaint.models.glcic import PAPER_DILATIONS, CompletionNet
from ganpaint.models.residual import ResidualGenerator
from ganpaint.models.summary import describe
from ganpaint.training.loop import train
from ganpaint.training.setup import learning_rate_factor

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CENTRE = {"masks.kind": "center", "masks.hole_min_px": 16, "masks.hole_max_px": 16}


def _inputs(family: str, count: int = 2, side: int = 32):
    images = torch.rand(count, 3, side, side, generator=torch.Generator().manual_seed(0))
    hole_mask = torch.zeros(count, 1, side, side)
    hole_mask[..., 8:24, 8:24] = 1
    captions = (torch.randint(1, 50, (count, 6)),) if registry.get(family).captions else ()
    return images, hole_mask, captions


@pytest.mark.parametrize(
    "family", [name for name in registry.names() if registry.get(name).inpaints]
)
def test_a_residual_generator_starts_as_its_input_fill_and_learns(family, make_config, tmp_path):
    overrides = {"model.family": family, "model.residual": True}
    if registry.get(family).predicts_center:
        overrides |= CENTRE
    if registry.get(family).captions:
        overrides |= {"data.captions": True, "model.vocabulary_size": 64}
    config = make_config(tmp_path, **overrides)
    generator = build_nets(config.model, 32, config.masks.local_px).generator
    assert isinstance(generator, ResidualGenerator)
    images, hole_mask, captions = _inputs(family)
    fill = HoleFill("harmonic", torch.zeros(3))
    filled = fill(images, hole_mask)
    generator.eval()
    centre = registry.get(family).predicts_center
    prediction, completed = complete(generator, images, hole_mask, fill, centre, *captions)
    assert torch.allclose(prediction, filled, atol=1e-6)  # exactly the fill (to float rounding)
    # One optimiser step on the reconstruction moves it off the fill: the net is not dead.
    generator.train()
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    _, completed = complete(generator, images, hole_mask, fill, centre, *captions)
    nn.functional.mse_loss(completed, images).backward()
    optimizer.step()
    generator.eval()
    moved, _ = complete(generator, images, hole_mask, fill, centre, *captions)
    assert not torch.allclose(moved, filled, atol=1e-4)


def test_completion_net_takes_the_dilation_rates_in_order():
    net = CompletionNet(width=8, dilations=(1, 2, 4, 8))
    rates = [conv.dilation[0] for conv in net.modules() if isinstance(conv, nn.Conv2d)]
    assert [rate for rate in rates if rate > 1] == [2, 4, 8] and rates.count(1) == len(rates) - 3
    paper = [conv.dilation[0] for conv in CompletionNet(8).modules() if isinstance(conv, nn.Conv2d)]
    assert [rate for rate in paper if rate > 1] == list(PAPER_DILATIONS)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"model.dilations": [1, 2, 4]}, "model.dilations"),
        ({"model.dilations": [0, 2, 4, 8]}, "model.dilations"),
        (
            {"model.family": "context_encoder", **CENTRE, "model.dilations": [1, 2, 4, 8]},
            "model.dilations",
        ),
        ({"model.family": "dcgan", "data.image_px": 64, "model.residual": True}, "model.residual"),
        ({"model.hole_fill": "telea"}, "model.hole_fill"),
        ({"model.fill_iterations": -1}, "model.fill_iterations"),
        ({"model.fill_tension": 1.5}, "model.fill_tension"),
        ({"model.fill_tension": -0.1}, "model.fill_tension"),
    ],
)
def test_recipe_options_are_checked_in_one_line(overrides, key, make_config, tmp_path):
    with pytest.raises(ConfigError, match=key):
        config_lib.validate(make_config(tmp_path, **overrides))


def test_recipe_options_change_the_model_so_a_resume_must_match():
    assert "model.residual" in config_lib.MODEL_SHAPING_KEYS
    paper = config_lib.load(None, [])
    assert list(paper.model.dilations) == list(PAPER_DILATIONS)
    other = config_lib.load(None, ["model.dilations=[1,2,4,8]", "model.residual=true"])
    assert config_lib.shaping_differences(paper, other) == [
        "model.residual: False -> True",
        "model.dilations: [2, 4, 8, 16] -> [1, 2, 4, 8]",
    ]


@pytest.mark.parametrize(
    "preset", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name != "demo.yaml")
)
def test_paper_presets_keep_the_papers_choices(preset):
    model = config_lib.load(str(CONFIGS / preset), []).model
    assert not model.residual
    assert model.hole_fill in ("mean", "zero")
    assert model.fill_iterations == 0
    if hasattr(model, "dilations"):  # the families with dilated rows (GLCIC)
        assert list(model.dilations) == list(PAPER_DILATIONS)


def test_the_demo_uses_the_recipe():
    model = config_lib.load(str(CONFIGS / "demo.yaml"), []).model
    recipe = (
        model.residual,
        model.hole_fill,
        model.fill_tension,
        model.fill_iterations,
        list(model.dilations),
    )
    assert recipe == (True, "tension", TENSION, 100, [1, 2, 4, 8])


def test_the_config_default_tension_is_the_fills_default():
    assert config_lib.ModelConfig().fill_tension == TENSION


def test_the_report_names_the_best_classical_fill():
    results = {
        "model": {"hole_psnr": 21.0, "hole_ssim": 0.70},
        "mean_fill": {"hole_psnr": 12.0, "hole_ssim": 0.30},
        "telea": {"hole_psnr": 19.5, "hole_ssim": 0.65},
        "pyramid_fill": {"hole_psnr": 17.4, "hole_ssim": 0.60},
        "harmonic_fill": {"hole_psnr": 20.25, "hole_ssim": 0.68},
    }
    assert best_baseline(results) == "harmonic_fill"
    line = versus_best(results)
    assert "21.00 dB model vs 20.25 dB harmonic fill, the best classical fill (+0.75 dB)" in line
    assert "hole SSIM 0.7000 vs 0.6800 (+0.0200)" in line
    del results["harmonic_fill"]
    assert "19.50 dB Telea" in versus_best(results)


def test_an_untrained_residual_run_validates_at_exactly_its_fill(
    synthetic_shards, make_config, capsys
):
    """Training step 0 of the recipe: the net's validation score is the harmonic fill's."""
    config = make_config(
        synthetic_shards,
        **{
            "model.residual": True,
            "model.hole_fill": "harmonic",
            "model.dilations": [1, 2, 4, 8],
            # Adadelta at 1e-30 (a rate of 0 is refused): the weights move by ~1e-30, far below
            # what changes an output pixel
            "optim.generator_lr": 1e-30,
            "optim.discriminator_lr": 1e-30,
            "schedule.completion_steps": 1,
            "schedule.discriminator_steps": 1,
            "schedule.total_steps": 2,
            "data.val_images": 8,
        },
    )
    run_dir = train(config)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("validation: hole PSNR ") and "the best classical fill" in last
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    final = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    assert final["val/hole_psnr"] == pytest.approx(final["val/hole_psnr_harmonic_fill"], abs=1e-4)
    assert final["val/hole_ssim"] == pytest.approx(final["val/hole_ssim_harmonic_fill"], abs=1e-5)
    assert final["val/hole_psnr"] > final["val/hole_psnr_mean_fill"] + 3


def test_cosine_decay_falls_from_the_rate_to_zero():
    cosine = config_lib.OptimConfig(lr_decay="cosine")
    assert [learning_rate_factor(cosine, step, 8) for step in (0, 4, 8)] == pytest.approx(
        [1.0, 0.5, 0.0]
    )
    assert learning_rate_factor(config_lib.OptimConfig(), 7, 8) == 1.0


def test_a_decayed_run_resumed_from_a_checkpoint_ends_with_the_same_weights(
    synthetic_shards, make_config, tmp_path
):
    """The rate is a function of the step alone: a resume continues the decay exactly."""
    common = {
        "optim.generator": "adam",
        "optim.discriminator": "adam",
        "optim.generator_lr": 1e-3,
        "optim.discriminator_lr": 1e-3,
        "optim.lr_decay": "cosine",
        "schedule.completion_steps": 3,
        "schedule.discriminator_steps": 2,
        "schedule.total_steps": 9,
        "checkpoint.every_steps": 4,
        "checkpoint.keep": 10,
        "log.every_steps": 1,
    }
    straight = train(make_config(synthetic_shards, **common, **{"run.dir": str(tmp_path / "a")}))
    resumed = train(
        make_config(synthetic_shards, **common, **{"run.dir": str(tmp_path / "b")}),
        resume_from=straight / "checkpoints" / "step-00000004",
    )
    rates = [
        json.loads(line)["lr/generator"]
        for line in (straight / "stats.jsonl").read_text().splitlines()
    ]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] < 1e-4 and rates == sorted(rates)[::-1]
    expected = load_file(str(straight / "export" / "generator.safetensors"))
    actual = load_file(str(resumed / "export" / "generator.safetensors"))
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


def test_the_demo_recipe_is_summarised_like_any_net():
    """`ganpaint models`: a residual net's field is its wrapped net's (the fill adds the pixel)."""
    recipe = describe(config_lib.load("demo"))["networks"]["generator"]
    plain = describe(config_lib.load("demo", ["model.residual=false"]))["networks"]["generator"]
    assert recipe["receptive_field_px"] == plain["receptive_field_px"] == 183
    assert recipe["parameters"] == plain["parameters"]


def test_a_residual_full_image_net_takes_windows_of_any_shape():
    """`ganpaint inpaint` and the page run the net on non-square windows around the holes."""
    generator = ResidualGenerator(CompletionNet(width=8, dilations=(1, 2, 4, 8))).eval()
    images = torch.rand(1, 3, 48, 20)
    hole_mask = torch.zeros(1, 1, 48, 20)
    hole_mask[..., 10:30, 4:16] = 1
    fill = HoleFill("harmonic", torch.zeros(3))
    prediction, _ = complete(generator, images, hole_mask, fill, False)
    assert torch.allclose(prediction, fill(images, hole_mask), atol=1e-6)
