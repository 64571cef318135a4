"""Introspection for `ganpaint models`: layer tables, parameter counts, GFLOPs, receptive field."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ganpaint import config as config_lib
from ganpaint.models import build_nets, example_inputs, registry
from ganpaint.models.layers import evaluating
from ganpaint.models.residual import ResidualGenerator

LAYER_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
PROBE_WIDTH = 1  # the receptive field depends on kernels, strides and dilations, not on width
MAX_PROBE_PX = 1024  # GLCIC's 303 px field needs a 512 px probe
HEADERS = {
    "dilation": "dil",
    "out_channels": "out ch",
    "input_shape": "input",
    "output_shape": "output",
}


def count_parameters(module: nn.Module) -> int:
    """Number of parameter values (every parameter of ganpaint's nets is trained)."""
    return sum(parameter.numel() for parameter in module.parameters())


def forward_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass on `inputs` (the whole batch), by torch's FlopCounterMode.

    A multiply-add counts as 2 FLOPs; only matmuls and convolutions are counted.
    """
    counter = FlopCounterMode(display=False)
    with evaluating(module), torch.no_grad(), counter:
        module(*inputs)
    return counter.get_total_flops()


def _positive_probe(generator: nn.Module) -> nn.Module:
    """An eval copy whose convolutions average with positive weights and whose BN is the identity.

    With positive weights on a positive input no ReLU is ever zero, so the gradient of an output
    pixel is nonzero exactly on the inputs some path reaches: the receptive field, not the part of
    it that random weights happen to keep alive. (Edge gradients are ~1e-15: fine in fp32.)
    """
    probe = copy.deepcopy(generator).float().eval()
    with torch.no_grad():
        for module in probe.modules():
            if isinstance(module, LAYER_TYPES):
                module.weight.fill_(module.weight.shape[0] / module.weight.numel())
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()  # running mean 0, var 1, weight 1, bias 0
    probe.requires_grad_(False)
    return probe


def _gradient_extents(probe: nn.Module, side: int, offsets: int) -> list[tuple[int, int]]:
    """First and last input row reached from output pixel centre + k (on the diagonal) of sample k.

    One batched pass: eval-mode samples do not interact, so sample k's input gradient comes from
    its own output pixel only.
    """
    image = torch.ones(offsets, 3, side, side, requires_grad=True)
    output = probe(image, torch.ones(offsets, 1, side, side))
    center = torch.tensor(output.shape[-2:]) // 2
    sample = torch.arange(offsets)
    output[sample, :, center[0] + sample, center[1] + sample].sum().backward()
    extents = []
    for gradient in image.grad:
        rows = gradient.abs().sum(dim=(0, 2)).nonzero().flatten()
        extents.append((int(rows[0]), int(rows[-1])))
    return extents


def receptive_field(generator: nn.Module, image_px: int) -> int:
    """Receptive field (px) of a central output pixel, measured with a gradient probe.

    Backpropagates from an output pixel near the centre to a [1, 3, P, P] input (starting at
    P = image_px) and measures the extent of the input rows with nonzero gradient. With stride-2
    layers the extent depends on the pixel's position modulo the total stride (4 for GLCIC: 299 or
    303 px), so the pixels centre + 0..3 on the diagonal are probed and the largest is returned.
    When the region touches the border the field is larger than the probe, so P doubles (the
    generator must be fully convolutional) until it fits or P reaches max(image_px, 1024 px); a
    field that still touches the border is reported as the probe's extent. For
    full-image generator(image, hole_mask) nets (the centre-predicting nets see everything).
    """
    if isinstance(generator, ResidualGenerator):  # its input fill adds just the pixel itself
        generator = generator.net
    probe, side = _positive_probe(generator), image_px
    while True:
        extents = _gradient_extents(probe, side, offsets=4)
        inside = all(first > 0 and last < side - 1 for first, last in extents)
        if inside or side >= max(image_px, MAX_PROBE_PX):
            return max(last - first + 1 for first, last in extents)
        side *= 2


def layer_table(module: nn.Module, *inputs: torch.Tensor) -> list[dict[str, Any]]:
    """One row per convolution / linear layer, in call order, with its input and output shapes (no
    batch): an input wider than the previous output shows a skip connection's concatenation."""
    rows: list[dict[str, Any]] = []

    def record(name: str, layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        convolution = not isinstance(layer, nn.Linear)
        rows.append(
            {
                "name": name,
                "kind": {nn.Conv2d: "conv", nn.ConvTranspose2d: "deconv"}.get(
                    type(layer), "linear"
                ),
                "kernel": layer.kernel_size[0] if convolution else None,
                "stride": layer.stride[0] if convolution else None,
                "dilation": layer.dilation[0] if convolution else None,
                "out_channels": layer.out_channels if convolution else layer.out_features,
                "input_shape": list(inputs[0].shape[1:]),
                "output_shape": list(output.shape[1:]),
            }
        )

    handles = [
        layer.register_forward_hook(
            lambda layer, inputs, output, name=name: record(name, layer, inputs, output)
        )
        for name, layer in module.named_modules()
        if isinstance(layer, LAYER_TYPES)
    ]
    try:
        with evaluating(module), torch.no_grad():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return rows


def describe(config: config_lib.TrainConfig) -> dict[str, Any]:
    """Everything `ganpaint models` prints, as plain data.

    Shapes, parameters and FLOPs come from nets built on the meta device (no memory, no compute);
    only the receptive-field probe computes, on a width-1 build of the same generator.
    """
    model, image_px, local_px = config.model, config.data.image_px, config.masks.local_px
    with torch.device("meta"):
        nets = build_nets(model, image_px, local_px)
    generator_inputs, discriminator_inputs = (
        tuple(tensor.to("meta") for tensor in inputs)
        for inputs in example_inputs(model, image_px, local_px)
    )
    networks = {}
    for name, net, inputs in (
        ("generator", nets.generator, generator_inputs),
        ("discriminator", nets.discriminator, discriminator_inputs),
    ):
        networks[name] = {
            "class": type(net).__name__,
            "parameters": count_parameters(net),
            "gflops_per_image": forward_flops(net, *inputs) / 1e9,
            "input_shapes": [list(tensor.shape[1:]) for tensor in inputs],
            "layers": layer_table(net, *inputs),
        }
    family = registry.get(model.family)
    # Full-image inpainting nets are fully convolutional: their field is worth knowing (the
    # centre predictors see the whole image through their bottleneck).
    if family.inpaints and not family.predicts_center:
        narrow = build_nets(dataclasses.replace(model, width=PROBE_WIDTH), image_px, local_px)
        networks["generator"]["receptive_field_px"] = receptive_field(narrow.generator, image_px)
    return {
        "family": model.family,
        "image_px": image_px,
        "local_px": local_px,
        "networks": networks,
    }


def _print_rich(summary: dict[str, Any]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or redirected: no width to fit, keep rows unbroken
        console = Console(width=120)
    console.print(
        f"[bold]{summary['family']}[/bold]  image {summary['image_px']} px, "
        f"local {summary['local_px']} px"
    )
    columns = (
        "name",
        "kind",
        "kernel",
        "stride",
        "dilation",
        "out_channels",
        "input_shape",
        "output_shape",
    )
    for name, network in summary["networks"].items():
        table = Table(title=f"{name}: {network['class']}", title_justify="left", box=box.SIMPLE)
        for column in columns:
            table.add_column(
                HEADERS.get(column, column),
                no_wrap=True,
                justify="left" if column in ("name", "kind") else "right",
            )
        for layer in network["layers"]:
            shapes = ["x".join(map(str, layer[column])) for column in columns[-2:]]
            cells = [layer[column] for column in columns[:-2]] + shapes
            table.add_row(*("" if cell is None else str(cell) for cell in cells))
        console.print(table)
        line = (
            f"  parameters {network['parameters']:,} | "
            f"{network['gflops_per_image']:.3f} GFLOPs per image (forward)"
        )
        if "receptive_field_px" in network:
            line += f" | receptive field {network['receptive_field_px']} px"
        console.print(line, soft_wrap=True)


def models_command(config: str, overrides: list[str], as_json: bool) -> int:
    """`ganpaint models --config FILE [key=value ...] [--json]`."""
    summary = describe(config_lib.load(config, overrides))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _print_rich(summary)
    return 0
