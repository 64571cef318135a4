"""The device-side non-finite guard: a rejected update changes nothing, bit for bit, and the health
counters (kept on the device) report what the loop stops on."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from torch import nn

from ganpaint.config import RunConfig
from ganpaint.training.backend import DDPBackend
from ganpaint.training.guard import Health


def small_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    return net.to(memory_format=torch.channels_last)  # strided parameters, as in training


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, betas=(0.5, 0.9), weight_decay=0.1),
    "adadelta": lambda params: torch.optim.Adadelta(params, lr=1.0, weight_decay=0.1),
}


@pytest.fixture(scope="module")
def backend() -> DDPBackend:
    return DDPBackend(Accelerator(cpu=True), RunConfig(cpu=True))


def run(
    backend: DDPBackend, updates: list[str], optimizer_name: str
) -> tuple[nn.Module, torch.optim.Optimizer, list]:
    """Apply updates ("good0", "good1", ... or "nan") through DDPBackend.apply_update."""
    net = small_net()
    optimizer = OPTIMIZERS[optimizer_name](net.parameters())
    applied = []
    for update in updates:
        generator = torch.Generator().manual_seed(len(update) + ord(update[-1]))
        images = torch.rand(2, 3, 6, 6, generator=generator)
        loss = net(images).square().mean()
        if update == "nan":
            loss = loss * float("nan")
        loss.backward()
        applied.append(bool(backend.apply_update(net, optimizer, loss.detach())))
    return net, optimizer, applied


def tensors(net: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    state = [
        value
        for parameter in net.parameters()
        for value in optimizer.state.get(parameter, {}).values()
    ]
    return [parameter.detach() for parameter in net.parameters()] + state


def assert_bit_identical(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # bits, signed zeros too


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize(
    "with_skips",
    [["good0", "nan", "good1"], ["nan", "good0", "good1"], ["good0", "nan", "nan", "good1"]],
    ids=["middle", "first", "twice"],
)
def test_a_rejected_update_leaves_weights_and_state_bit_identical(
    backend, optimizer_name, with_skips
):
    skipped_net, skipped_optimizer, applied = run(backend, with_skips, optimizer_name)
    clean = [update for update in with_skips if update != "nan"]
    clean_net, clean_optimizer, _ = run(backend, clean, optimizer_name)
    assert applied == [update != "nan" for update in with_skips]
    assert_bit_identical(
        tensors(skipped_net, skipped_optimizer), tensors(clean_net, clean_optimizer)
    )
    # The good updates moved the weights: the comparison is not vacuous.
    assert not torch.equal(next(skipped_net.parameters()), next(small_net().parameters()))


def test_health_counts_on_the_device_and_names_the_first_storm():
    health = Health()
    assert health.read().skipped == 0 and health.read().storm is None
    steps = [
        [(False, "generator"), (False, "discriminator")],  # 2 in a row
        [(False, "generator"), (True, "discriminator")],  # 3 within the step, 0 at its end
        [(False, "discriminator"), (False, "generator")],  # 2
        [(False, "discriminator"), (False, "generator")],  # 4: the limit is reached here
        [(True, "discriminator"), (True, "generator")],  # back to 0; the storm is remembered
    ]
    for step, updates in enumerate(steps, start=1):
        for applied, net in updates:
            health.record(torch.tensor(applied), net)
        health.end_step(step, limit=3)
    reading = health.read()
    assert reading.skipped == 7
    assert reading.storm == (4, 4, "generator")
    health.skipped_before = 10  # as restored from a checkpoint
    assert health.read().skipped == 17
