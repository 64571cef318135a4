"""Model zoo: shapes, parameter counts derived by hand from the papers' tables, receptive field,
init, bf16 autocast + channels_last, and the `ganpaint models` command."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch import nn

from ganpaint import cli
from ganpaint.config import ModelConfig, model_config
from ganpaint.models import build_nets, example_inputs, registry
from ganpaint.models.summary import count_parameters, forward_flops, layer_table, receptive_field

TINY = {  # family -> (image_px, local_px) for width-8 nets
    "glcic": (32, 16),
    "context_encoder": (32, 16),
    "wgan_unet": (32, 16),
    "dcgan": (64, 64),
}
PAPER = {
    "glcic": (256, 128),
    "context_encoder": (128, 64),
    "wgan_unet": (64, 32),
    "dcgan": (64, 64),
}


# Each family's own settings at the same tiny scale (only the keys the family has).
TINY_SETTINGS = {"glcic": {"fc_features": 16}, "dcgan": {"latent_dim": 10}}


def tiny_model(family: str) -> ModelConfig:
    return model_config(family, width=8, disc_width=8, **TINY_SETTINGS.get(family, {}))


def expected_output_px(family: str, image_px: int, local_px: int) -> int:
    return {"glcic": image_px, "dcgan": 64}.get(family, local_px)


def meta_nets(family: str, image_px: int, local_px: int):
    """Paper-width nets on the meta device: shapes and parameters without memory or compute."""
    with torch.device("meta"):
        return build_nets(model_config(family), image_px, local_px)


# ---- shapes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(TINY))
def test_tiny_nets_train_forward_backward(family):
    image_px, local_px = TINY[family]
    model = tiny_model(family)
    nets = build_nets(model, image_px, local_px)
    generator_inputs, discriminator_inputs = example_inputs(model, image_px, local_px, batch=3)
    output = nets.generator(*generator_inputs)
    side = expected_output_px(family, image_px, local_px)
    assert output.shape == (3, 3, side, side)
    assert 0 <= output.min() and output.max() <= 1
    logits = nets.discriminator(*discriminator_inputs)
    assert logits.shape == (3,)
    (output.mean() + logits.sum()).backward()
    for net in (nets.generator, nets.discriminator):
        assert all(parameter.grad is not None for parameter in net.parameters())
    assert registry.get(family).predicts_center is (family in ("context_encoder", "wgan_unet"))


@pytest.mark.parametrize("family", ["context_encoder", "wgan_unet", "dcgan"])
def test_paper_size_shapes(family):
    image_px, local_px = PAPER[family]
    model = model_config(family)
    nets = build_nets(model, image_px, local_px)
    generator_inputs, discriminator_inputs = example_inputs(model, image_px, local_px, batch=2)
    with torch.no_grad():
        output = nets.generator.eval()(*generator_inputs)
        logits = nets.discriminator.eval()(*discriminator_inputs)
    side = expected_output_px(family, image_px, local_px)
    assert output.shape == (2, 3, side, side) and logits.shape == (2,)


@pytest.mark.slow
def test_glcic_paper_size_shapes():
    model = model_config("glcic")
    nets = build_nets(model, 256, 128)
    generator_inputs, discriminator_inputs = example_inputs(model, 256, 128, batch=1)
    with torch.no_grad():
        assert nets.generator.eval()(*generator_inputs).shape == (1, 3, 256, 256)
        assert nets.discriminator.eval()(*discriminator_inputs).shape == (1,)


def test_glcic_completion_net_is_fully_convolutional():
    generator = build_nets(tiny_model("glcic"), 32, 16).generator.eval()
    image, hole_mask = torch.rand(1, 3, 44, 60), torch.zeros(1, 1, 44, 60)
    with torch.no_grad():
        assert generator(image, hole_mask).shape == (1, 3, 44, 60)


def test_glcic_completion_net_layer_table():
    """17 convolutions with the paper's kernels, strides, dilations and widths (Table 1)."""
    generator = meta_nets("glcic", 256, 128).generator
    rows = layer_table(
        generator,
        torch.empty(1, 3, 64, 64, device="meta"),
        torch.empty(1, 1, 64, 64, device="meta"),
    )
    got = [
        (row["kind"], row["kernel"], row["stride"], row["dilation"], row["out_channels"])
        for row in rows
    ]
    assert got == [
        ("conv", 5, 1, 1, 64),
        ("conv", 3, 2, 1, 128),
        ("conv", 3, 1, 1, 128),
        ("conv", 3, 2, 1, 256),
        ("conv", 3, 1, 1, 256),
        ("conv", 3, 1, 1, 256),
        ("conv", 3, 1, 2, 256),
        ("conv", 3, 1, 4, 256),
        ("conv", 3, 1, 8, 256),
        ("conv", 3, 1, 16, 256),
        ("conv", 3, 1, 1, 256),
        ("conv", 3, 1, 1, 256),
        ("deconv", 4, 2, 1, 128),
        ("conv", 3, 1, 1, 128),
        ("deconv", 4, 2, 1, 64),
        ("conv", 3, 1, 1, 32),
        ("conv", 3, 1, 1, 3),
    ]
    assert rows[11]["output_shape"] == [256, 16, 16] and rows[-1]["output_shape"] == [3, 64, 64]


@pytest.mark.parametrize(
    ("image_px", "convs", "final_side"),
    [(256, 6, 4), (128, 5, 4), (160, 5, 5), (96, 4, 6), (32, 3, 4)],
)
def test_glcic_discriminator_depth_rule(image_px, convs, final_side):
    """Stride-2 convs are stacked while the map stays >= 4 px (paper: 6 at 256, 5 at 128)."""
    model = tiny_model("glcic")
    discriminator = build_nets(model, image_px, 16).discriminator
    rows = layer_table(
        discriminator, torch.rand(1, 3, image_px, image_px), torch.rand(1, 3, 16, 16)
    )
    global_convs = [row for row in rows if row["name"].startswith("global_net.convs")]
    assert len(global_convs) == convs
    assert global_convs[-1]["output_shape"][1:] == [final_side, final_side]


# ---- parameter counts, derived by hand from the tables ----------------------------------------


def conv(c_in: int, c_out: int, kernel: int, bn: bool) -> int:
    """Weights, plus the BN scale and shift when BN follows, else the conv bias."""
    return c_in * c_out * kernel * kernel + (2 * c_out if bn else c_out)


def test_glcic_completion_net_parameters():
    # Table 1 at width 64, input RGB + mask = 4 channels, row by row:
    #   1: 5x5 4->64 | 2: 3x3/2 64->128 | 3: 3x3 128->128 | 4: 3x3/2 128->256 |
    #   5-12: eight 3x3 256->256 (two plain, four dilated 2/4/8/16, two plain) |
    #   13: 4x4 deconv 256->128 | 14: 3x3 128->128 | 15: 4x4 deconv 128->64 | 16: 3x3 64->32 |
    #   17: 3x3 32->3 (bias, no BN; sigmoid)
    expected = (
        conv(4, 64, 5, True)
        + conv(64, 128, 3, True)
        + conv(128, 128, 3, True)
        + conv(128, 256, 3, True)
        + 8 * conv(256, 256, 3, True)  # rows 5-12
        + conv(256, 128, 4, True)
        + conv(128, 128, 3, True)
        + conv(128, 64, 4, True)
        + conv(64, 32, 3, True)
        + conv(32, 3, 3, False)
    )
    assert expected == 6_069_155  # the paper: "6.07 M"
    generator = meta_nets("glcic", 256, 128).generator
    assert count_parameters(generator) == expected


def test_glcic_discriminator_parameters():
    # Global D at 256 px: 5x5 s2 convs 64, 128, 256, 512, 512, 512 (BN), 4x4x512 -> FC 1024.
    # Local D at 128 px: the first five convs, 4x4x512 -> FC 1024. Joint FC 2048 -> 1.
    convs = (
        conv(3, 64, 5, True)
        + conv(64, 128, 5, True)
        + conv(128, 256, 5, True)
        + conv(256, 512, 5, True)
        + conv(512, 512, 5, True)
    )
    fc = 4 * 4 * 512 * 1024 + 1024
    expected = (convs + conv(512, 512, 5, True) + fc) + (convs + fc) + (2048 + 1)
    discriminator = meta_nets("glcic", 256, 128).discriminator
    assert count_parameters(discriminator) == expected


def test_dcgan_parameters():
    # G: z=100 (1x1) -> 4x4 deconvs 512 (4x4), 256, 128, 64 (BN), -> 3 (tanh, bias).
    generator = (
        conv(100, 512, 4, True)
        + conv(512, 256, 4, True)
        + conv(256, 128, 4, True)
        + conv(128, 64, 4, True)
        + conv(64, 3, 4, False)
    )
    # D: 4x4 s2 convs 64 (no BN, bias), 128, 256, 512 (BN), then 4x4 conv 512 -> 1 (bias).
    discriminator = (
        conv(3, 64, 4, False)
        + conv(64, 128, 4, True)
        + conv(128, 256, 4, True)
        + conv(256, 512, 4, True)
        + conv(512, 1, 4, False)
    )
    nets = meta_nets("dcgan", 64, 64)
    assert count_parameters(nets.generator) == generator == 3_576_707
    assert count_parameters(nets.discriminator) == discriminator


def test_context_encoder_parameters():
    # Encoder at 128 px: 4x4 s2 convs 64 (no BN), 64, 128, 256, 512; bottleneck 4x4 512 -> 4000;
    # decoder 4x4 deconvs 4000 -> 512 (1 -> 4), 256, 128, 64, -> 3 (bias). D: the DCGAN D.
    encoder = (
        conv(3, 64, 4, False)
        + conv(64, 64, 4, True)
        + conv(64, 128, 4, True)
        + conv(128, 256, 4, True)
        + conv(256, 512, 4, True)
    )
    bottleneck = conv(512, 4000, 4, True)
    decoder = (
        conv(4000, 512, 4, True)
        + conv(512, 256, 4, True)
        + conv(256, 128, 4, True)
        + conv(128, 64, 4, True)
        + conv(64, 3, 4, False)
    )
    nets = meta_nets("context_encoder", 128, 64)
    assert count_parameters(nets.generator) == encoder + bottleneck + decoder


def test_wgan_unet_parameters():
    # The write-up's tables at width 64. G: 4x4 s2 convs 3->32, 32->64, 64->96, 96->128 (BN);
    # transposed 128->96, (96+96)->64 (BN), (64+64)->3 (bias, sigmoid). Critic: 4x4 s2 convs
    # 3->32, 32->64, 64->96, 96->128, Conv5 2x2 128->256 (BN), linear score 256->1.
    generator = (
        conv(3, 32, 4, True)
        + conv(32, 64, 4, True)
        + conv(64, 96, 4, True)
        + conv(96, 128, 4, True)
        + conv(128, 96, 4, True)
        + conv(96 + 96, 64, 4, True)
        + conv(64 + 64, 3, 4, False)
    )
    critic = (
        conv(3, 32, 4, True)
        + conv(32, 64, 4, True)
        + conv(64, 96, 4, True)
        + conv(96, 128, 4, True)
        + conv(128, 256, 2, True)
        + (256 + 1)
    )
    assert generator == 729_539  # the write-up: "about 0.73 M"
    nets = meta_nets("wgan_unet", 64, 32)
    assert count_parameters(nets.generator) == generator
    assert count_parameters(nets.discriminator) == critic == 461_697


def test_wgan_unet_layer_tables_match_the_write_up():
    """Both tables row by row: filters, kernel, stride, in-shape (skips) and out-shape."""
    nets = meta_nets("wgan_unet", 64, 32)
    generator_inputs, critic_inputs = (
        tuple(tensor.to("meta") for tensor in inputs)
        for inputs in example_inputs(model_config("wgan_unet"), 64, 32)
    )

    def rows(net, inputs):
        return [
            ([part for part in row["name"].split(".") if not part.isdigit()][-1],)
            + (row["kernel"], row["stride"])
            + (tuple(row["input_shape"]), tuple(row["output_shape"]))
            for row in layer_table(net, *inputs)
        ]

    assert rows(nets.generator, generator_inputs) == [
        ("conv1", 4, 2, (3, 64, 64), (32, 32, 32)),
        ("conv2", 4, 2, (32, 32, 32), (64, 16, 16)),
        ("conv3", 4, 2, (64, 16, 16), (96, 8, 8)),
        ("conv4", 4, 2, (96, 8, 8), (128, 4, 4)),
        ("tconv1", 4, 2, (128, 4, 4), (96, 8, 8)),
        ("tconv2", 4, 2, (96 + 96, 8, 8), (64, 16, 16)),
        ("tconv3", 4, 2, (64 + 64, 16, 16), (3, 32, 32)),
    ]
    assert rows(nets.discriminator, critic_inputs) == [
        ("conv1", 4, 2, (3, 32, 32), (32, 16, 16)),
        ("conv2", 4, 2, (32, 16, 16), (64, 8, 8)),
        ("conv3", 4, 2, (64, 8, 8), (96, 4, 4)),
        ("conv4", 4, 2, (96, 4, 4), (128, 2, 2)),
        ("conv5", 2, 1, (128, 2, 2), (256, 1, 1)),
        ("score", None, None, (256,), (1,)),
    ]
    activations = {type(module) for module in nets.generator.modules()}
    assert nn.ReLU in activations and nn.LeakyReLU not in activations


# ---- receptive field ----------------------------------------------------------------------------


class DilatedStack(nn.Module):
    """3x3, 3x3 dilation 2, 5x5: receptive field 1 + 2 + 4 + 4 = 11 px."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(4, 2, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2, 2, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(2, 3, 5, padding=2),
        )

    def forward(self, image, hole_mask):
        return self.layers(torch.cat([image, hole_mask], 1))


def test_receptive_field_of_known_stack():
    assert receptive_field(DilatedStack(), 32) == 11
    assert receptive_field(DilatedStack(), 8) == 11  # probe grows past the 8 px image


def glcic_reach(offset: int) -> int:
    """Rows of a 512-row input reached from output row 256 + offset, by index arithmetic alone.

    Table 1 as (kind, kernel, stride, dilation); convs pad dilation * (kernel - 1) / 2, the
    transposed convs (4x4, stride 2, pad 1) make output o from inputs i with 0 <= o + 1 - 2i < 4.
    """
    table = (
        [("conv", 5, 1, 1), ("conv", 3, 2, 1), ("conv", 3, 1, 1), ("conv", 3, 2, 1)]
        + [("conv", 3, 1, 1)] * 2
        + [("conv", 3, 1, d) for d in (2, 4, 8, 16)]
        + [("conv", 3, 1, 1)] * 2
        + [
            ("deconv", 4, 2, 1),
            ("conv", 3, 1, 1),
            ("deconv", 4, 2, 1),
            ("conv", 3, 1, 1),
            ("conv", 3, 1, 1),
        ]
    )
    sizes = [512]
    for kind, _, stride, _ in table:
        sizes.append(sizes[-1] * 2 if kind == "deconv" else sizes[-1] // stride)
    reached = {256 + offset}
    for (kind, kernel, stride, dilation), size_in in zip(
        reversed(table), reversed(sizes[:-1]), strict=True
    ):
        if kind == "conv":
            pad = dilation * (kernel - 1) // 2
            reached = {o * stride - pad + t * dilation for o in reached for t in range(kernel)}
        else:
            reached = {i for o in reached for i in range(size_in) if 0 <= o + 1 - 2 * i < 4}
        reached = {i for i in reached if 0 <= i < size_in}
    return max(reached) - min(reached) + 1


def test_glcic_receptive_field():
    """Width 1: the field depends on kernels, strides and dilations only (the paper says 307)."""
    derived = max(glcic_reach(offset) for offset in range(4))
    assert [glcic_reach(offset) for offset in range(4)] == [299, 303, 303, 299]
    generator = build_nets(replace(tiny_model("glcic"), width=1), 256, 128).generator
    assert receptive_field(generator, 256) == derived == 303


# ---- init, flops, autocast ----------------------------------------------------------------------


def test_dcgan_init():
    nets = build_nets(model_config("dcgan"), 64, 64)
    weights = torch.cat(
        [
            module.weight.flatten()
            for module in nets.generator.modules()
            if isinstance(module, nn.ConvTranspose2d)
        ]
    )
    assert abs(weights.std().item() - 0.02) < 1e-3 and abs(weights.mean().item()) < 1e-3
    norms = [module for module in nets.generator.modules() if isinstance(module, nn.BatchNorm2d)]
    scales = torch.cat([norm.weight for norm in norms])
    assert abs(scales.mean().item() - 1) < 5e-3 and 0.01 < scales.std().item() < 0.03
    assert all(torch.all(norm.bias == 0) for norm in norms)


def test_forward_flops_of_one_conv():
    layer = nn.Conv2d(3, 8, 3, padding=1)
    # 2 FLOPs per multiply-add: batch 2 x 8 outputs x 16 x 16 positions x (3 x 3 x 3) MACs
    assert forward_flops(layer, torch.rand(2, 3, 16, 16)) == 2 * 2 * 8 * 16 * 16 * 27


@pytest.mark.parametrize("family", list(TINY))
def test_bf16_autocast_channels_last(family):
    image_px, local_px = TINY[family]
    model = tiny_model(family)
    nets = build_nets(model, image_px, local_px)
    for net in (nets.generator, nets.discriminator):
        net.to(memory_format=torch.channels_last)
    generator_inputs, discriminator_inputs = example_inputs(model, image_px, local_px, batch=2)
    generator_inputs = tuple(
        tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor
        for tensor in generator_inputs
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = nets.generator(*generator_inputs)
        logits = nets.discriminator(*discriminator_inputs)
    assert output.dtype == torch.bfloat16 and torch.isfinite(output.float()).all()
    (output.float().mean() + logits.float().mean()).backward()
    gradients = [parameter.grad for parameter in nets.generator.parameters()]
    assert all(gradient is not None and torch.isfinite(gradient).all() for gradient in gradients)


# ---- the `ganpaint models` command -------------------------------------------------------------


def write_config(tmp_path, family: str) -> str:
    image_px, local_px = TINY[family]
    masks = (
        "kind: center\n  hole_min_px: 16\n  hole_max_px: 16\n  local_px: 16"
        if family in ("context_encoder", "wgan_unet")
        else f"kind: rect\n  hole_min_px: 8\n  hole_max_px: 12\n  local_px: {local_px}"
    )
    path = tmp_path / f"{family}.yaml"
    path.write_text(
        f"data:\n  image_px: {image_px}\n  resize_min_px: {image_px}\n  resize_max_px: {image_px}\n"
        f"masks:\n  {masks}\n"
        f"model:\n  family: {family}\n  width: 8\n  disc_width: 8\n"
        + "".join(f"  {key}: {value}\n" for key, value in TINY_SETTINGS.get(family, {}).items())
    )
    return str(path)


@pytest.mark.parametrize("family", list(TINY))
def test_models_command_json(tmp_path, capsys, family):
    assert cli.main(["models", "--config", write_config(tmp_path, family), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    image_px, local_px = TINY[family]
    nets = build_nets(tiny_model(family), image_px, local_px)
    generator = summary["networks"]["generator"]
    assert generator["parameters"] == count_parameters(nets.generator)
    assert summary["networks"]["discriminator"]["parameters"] == count_parameters(
        nets.discriminator
    )
    assert generator["gflops_per_image"] > 0
    side = expected_output_px(family, image_px, local_px)
    assert generator["layers"][-1]["output_shape"] == [3, side, side]
    if family == "glcic":
        assert len(generator["layers"]) == 17 and generator["receptive_field_px"] == 303


def test_models_command_table_and_override(tmp_path, capsys):
    config = write_config(tmp_path, "wgan_unet")
    assert cli.main(["models", "--config", config, "model.width=16"]) == 0
    out = capsys.readouterr().out
    parameters = count_parameters(
        build_nets(replace(tiny_model("wgan_unet"), width=16), 32, 16).generator
    )
    assert "WGANUNet" in out and f"{parameters:,}" in out and "GFLOPs" in out


def test_models_command_bad_key(tmp_path, capsys):
    assert cli.main(["models", "--config", write_config(tmp_path, "dcgan"), "model.depth=3"]) == 2
    assert "model.depth" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_json(tmp_path):
    """`ganpaint models --json` runs in a fresh interpreter (~6 s: torch import + FLOP counter)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganpaint.cli",
            "models",
            "--config",
            write_config(tmp_path, "dcgan"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(result.stdout)["family"] == "dcgan"
