"""The seed systems as published: preset values, the L2-only ablation, Context Encoders' overlap
loss, DCGAN's centre crop and the validation baseline named after the hole fill."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ganpaint import cli
from ganpaint import config as config_lib
from ganpaint.baselines import BASELINES
from ganpaint.config import ConfigError
from ganpaint.data.shards import pack
from ganpaint.data.stream import train_loader
from ganpaint.infer.export import load_generator
from ganpaint.infer.inpaint import inpaint_pixels
from ganpaint.losses import masked_mse, overlap_mse
from ganpaint.models import StepKind, build_nets, registry
from ganpaint.training.loop import train
from ganpaint.training.schedule import phases
from ganpaint.training.setup import step_settings
from ganpaint.training.validation import load_validation_set, run_validation

CONFIGS = Path(__file__).parent.parent / "configs"
CELEBA_TRAIN_IMAGES = 162_770


def preset(name: str) -> config_lib.TrainConfig:
    return config_lib.load(CONFIGS / f"{name}.yaml")


# ---- presets --------------------------------------------------------------------------------------


def test_wgan_unet_preset_is_the_write_up():
    config = preset("wgan_unet_coco")
    assert (config.data.image_px, config.masks.local_px, config.masks.hole_max_px) == (64, 32, 32)
    assert (config.model.width, config.model.disc_width) == (64, 64)  # the tables' widths
    assert (config.optim.generator, config.optim.discriminator) == ("adam", "adam")
    assert config.optim.generator_lr == config.optim.discriminator_lr == 2e-3
    assert config.data.batch_size == 32
    # L2 + WGAN "simply added"; 5 critic steps, clamp rule -> 0.03
    assert config.loss.reconstruction_weight == config.loss.adversarial_weight == 1.0
    assert config.schedule.critic_steps == 5 and config.loss.clamp == 0.0
    family = registry.get("wgan_unet")
    assert [phase.kind for phase in phases(family, config.schedule)] == [StepKind.CRITIC]


def test_models_command_prints_both_write_up_tables(capsys):
    assert cli.main(["models", "--config", str(CONFIGS / "wgan_unet_coco.yaml")]) == 0
    out = capsys.readouterr().out
    assert "WGANUNet" in out and "WGANCritic" in out
    assert "parameters 729,539" in out and "parameters 461,697" in out
    for row in ("192x8x8", "128x16x16", "3x32x32", "128x2x2", "256x1x1"):
        assert row in out


def test_l2_only_preset_trains_no_critic():
    config = preset("wgan_unet_coco_l2")
    assert config.model == preset("wgan_unet_coco").model
    (phase,) = phases(registry.get(config.model.family), config.schedule)
    assert (phase.kind, phase.start_step, phase.end_step) == (StepKind.COMPLETION, 0, 50_000)


def test_context_encoder_preset_overlap_and_twelve_epochs():
    config = preset("context_encoder_celeba")
    assert (config.loss.overlap_px, config.loss.overlap_weight) == (4, 10.0)
    assert (config.masks.local_px, config.masks.hole_max_px) == (64, 56)  # 64 predicted, 4 px band
    assert config.data.batch_size == 64
    epochs = config.schedule.total_steps * config.data.batch_size / CELEBA_TRAIN_IMAGES
    assert 11.99 < epochs < 12.01


def test_dcgan_preset_centre_crop_batch_64():
    config = preset("dcgan_celeba")
    assert (config.data.crop, config.data.hflip, config.data.batch_size) == ("centre", False, 64)
    assert config.data.resize_min_px == config.data.resize_max_px == config.data.image_px == 64


@pytest.mark.parametrize("name", ["glcic_paper", "glcic_celeba", "glcic_coco"])
def test_glcic_presets_centre_the_local_area(name):
    assert preset(name).masks.local_placement == "centred"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["masks.local_placement=left"], "masks.local_placement"),
        (["data.crop=middle"], "data.crop"),
        (["data.crop=centre", "data.resize_max_px=80"], "data.resize_max_px"),
        (["loss.overlap_px=-1"], "loss.overlap_px"),
        (["model.family=dcgan", "schedule.reconstruction_only=true"], "reconstruction_only"),
    ],
)
def test_new_keys_are_checked(overrides, key):
    with pytest.raises(ConfigError) as caught:
        config_lib.load(None, overrides)
    assert key in str(caught.value) and "\n" not in str(caught.value)


def test_centre_families_need_hole_plus_overlap_to_fill_the_centre():
    base = CONFIGS / "context_encoder_celeba.yaml"
    with pytest.raises(ConfigError, match="overlap_px=0"):
        config_lib.load(base, ["loss.overlap_px=0"])  # a 56 px hole in a 64 px centre, no overlap
    config = config_lib.load(
        base, ["loss.overlap_px=0", "masks.hole_min_px=64", "masks.hole_max_px=64"]
    )
    assert config.masks.hole_max_px == config.masks.local_px


# ---- losses ---------------------------------------------------------------------------------------


def test_overlap_mse_by_hand():
    """A 2x2 hole grown by 1 px: 4 hole pixels weigh 1, the 12 band pixels 10, the mean is over
    the 16 predicted pixels (and the 3 channels)."""
    hole = torch.zeros(1, 1, 8, 8)
    hole[..., 3:5, 3:5] = 1
    target = torch.zeros(1, 3, 8, 8)
    prediction = torch.full((1, 3, 8, 8), 0.5)  # error 0.25 everywhere, also outside the region
    expected = (4 * 0.25 + 10 * 12 * 0.25) * 3 / (16 * 3)
    assert overlap_mse(prediction, target, hole, 1, 10.0).item() == pytest.approx(expected)
    assert overlap_mse(prediction, target, hole, 0, 10.0) == masked_mse(prediction, target, hole)
    prediction[..., 3:5, 3:5] = 0  # only the band is wrong now
    band_only = 10 * 12 * 0.25 * 3 / (16 * 3)
    assert overlap_mse(prediction, target, hole, 1, 10.0).item() == pytest.approx(band_only)


# ---- tiny real runs -------------------------------------------------------------------------------

CENTRE = {
    "masks.kind": "center",
    "masks.hole_min_px": 16,
    "masks.hole_max_px": 16,
    "masks.local_px": 16,
    "optim.generator": "adam",
    "optim.discriminator": "adam",
    "optim.generator_lr": 2e-3,
    "optim.discriminator_lr": 2e-3,
    "model.family": "wgan_unet",
    "model.hole_fill": "zero",
    "log.every_steps": 1,
}


def test_l2_only_run_never_updates_the_critic(synthetic_shards, make_config):
    config = make_config(
        synthetic_shards,
        **{**CENTRE, "schedule.total_steps": 3, "schedule.reconstruction_only": True},
    )
    run_dir = train(config)
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert {row["phase"] for row in rows} == {"completion"}
    assert not any("/discriminator_" in key for row in rows for key in row)
    assert all("completion/generator_mse" in row for row in rows)
    torch.manual_seed(config.run.seed)  # the loop seeds the same way before building the nets
    initial = build_nets(config.model, config.data.image_px, config.masks.local_px)
    critic = load_file(str(run_dir / "export" / "discriminator.safetensors"))
    for name, tensor in initial.discriminator.state_dict().items():
        assert torch.equal(critic[name], tensor), name
    generator = load_file(str(run_dir / "export" / "generator.safetensors"))
    assert any(
        not torch.equal(generator[name], tensor)
        for name, tensor in initial.generator.state_dict().items()
    )


def test_validation_scores_the_net_beside_every_classical_fill(synthetic_shards, make_config):
    mean_rgb = torch.full((3,), 0.5)
    reports = {}
    for fill in ("zero", "mean", "harmonic"):
        config = make_config(synthetic_shards, **{**CENTRE, "model.hole_fill": fill})
        family = registry.get(config.model.family)
        validation = load_validation_set(config, family, torch.device("cpu"), mean_rgb)
        generator = build_nets(config.model, 32, 16).generator
        settings = step_settings(config, family, mean_rgb, torch.device("cpu"))
        scalars, _ = run_validation(generator, settings, validation)
        baselines = BASELINES
        assert set(scalars) == {
            f"val/{metric}{suffix}"
            for metric in ("hole_psnr", "hole_ssim")
            for suffix in ("", *(f"_{name}" for name in baselines))
        }
        reports[fill] = scalars
    # The classical fills do not depend on the net's input fill: same images, same holes.
    assert reports["zero"]["val/hole_psnr_telea"] == reports["harmonic"]["val/hole_psnr_telea"]
    # Smooth fills beat a flat colour on these images.
    assert (
        reports["mean"]["val/hole_psnr_harmonic_fill"] > reports["mean"]["val/hole_psnr_mean_fill"]
    )


def test_context_encoder_overlap_trains_and_inpaints_inside_its_hole(synthetic_shards, make_config):
    """32 px images, a 16 px predicted centre, a 12 px hole and a 2 px overlap band."""
    overrides = {
        **CENTRE,
        "model.family": "context_encoder",
        "model.hole_fill": "mean",
        "masks.hole_min_px": 12,
        "masks.hole_max_px": 12,
        "loss.overlap_px": 2,
        "loss.adversarial_weight": 0.001,
        "schedule.total_steps": 2,
    }
    run_dir = train(make_config(synthetic_shards, **overrides))
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["joint/generator_mse"]) for row in rows)
    exported = load_generator(run_dir)
    pixels = np.full((64, 64, 3), 120, np.uint8)
    inner = np.zeros((64, 64), bool)
    inner[22:42, 22:42] = True  # inside the middle 24 px (the hole's 12 of 32)
    result = inpaint_pixels(exported, pixels, inner, "none", "test")
    assert np.array_equal(result[~inner], pixels[~inner])
    # a hole anywhere: the net sees a window centred on it, the band as context around its hole
    corner = np.zeros((64, 64), bool)
    corner[2:12, 40:58] = True
    result = inpaint_pixels(exported, pixels, corner, "none", "test")
    assert np.array_equal(result[~corner], pixels[~corner])


# ---- DCGAN's centre crop -------------------------------------------------------------------------


def test_centre_crop_is_resize_then_centre_crop(tmp_path):
    """96x64 images of three 32 px colour bands: Resize(64) + CenterCrop(64) keeps columns
    16..79, i.e. 16 red, 32 green, 16 blue, for every sample and any seed."""
    folder = tmp_path / "bands"
    folder.mkdir()
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, :32, 2], image[:, 32:64, 1], image[:, 64:, 0] = 255, 255, 255  # BGR: red, green, blue
    for index in range(6):
        cv2.imwrite(str(folder / f"{index}.png"), image)
    shards = tmp_path / "shards"
    pack(
        "folder",
        shards,
        input=folder,
        size=64,
        image_format="png",
        workers=1,
        progress=False,
        val_fraction=0.0,
    )
    expected = np.zeros((3, 64, 64), np.uint8)
    expected[0, :, :16], expected[1, :, 16:48], expected[2, :, 48:] = 255, 255, 255
    for seed in (0, 1):
        data = config_lib.load(
            None,
            [f"data.shards={shards}", "data.crop=centre", "data.hflip=false", "data.workers=0"],
        ).data
        batch = next(iter(train_loader(data, 4, 0, 1, seed, 0)))
        for sample in batch.numpy():
            assert np.abs(sample.astype(int) - expected).max() <= 1
    random = config_lib.load(
        None, [f"data.shards={shards}", "data.resize_max_px=96", "data.workers=0"]
    ).data
    batch = next(iter(train_loader(random, 6, 0, 1, 0, 0))).numpy()
    assert any(np.abs(sample.astype(int) - expected).max() > 1 for sample in batch)
