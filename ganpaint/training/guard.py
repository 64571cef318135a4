"""The non-finite guard decided on the device: an optimiser step that is a no-op where a flag says
so, the run's health counters, and the finite check of weights and optimiser state before a save.

Nothing here reads a tensor on the host, so a training step never waits for the GPU and the CPU
can queue the next step's copies and kernels behind it. As with GradScaler's found_inf, the
decision travels as a tensor: the optimiser always steps, and where the update is rejected its
parameters and state are put back bit for bit. The counters are read only where the loop
synchronises anyway (log ticks and checkpoints).

The loss check cannot see everything: a finite loss whose gradients overflow, or a learning rate
large enough to overflow the update, leaves inf or NaN in the weights. So every checkpoint and
export first checks all weights and optimiser state (`finite_flags`: one fused check per save,
never per step), and a run whose state went non-finite rolls back instead of saving it
(ganpaint/training/rollback.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NET_NAMES = ("generator", "discriminator")
# Same-size integer types: selecting on bit patterns cannot let a NaN through the arithmetic.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().view(_BITS[tensor.element_size()])


def _select_(
    live: list[torch.Tensor], saved: list[torch.Tensor | None], keep: torch.Tensor
) -> None:
    """live[i] = live[i] if keep else saved[i] (zeros where saved[i] is None), in place.

    On the integer bit patterns, live * keep + saved * (1 - keep) is exact for keep in {0, 1},
    and multi-tensor kernels do it in a few launches for all tensors of a dtype.
    """
    groups: dict[torch.dtype, tuple[list, list, list]] = {}
    for tensor, before in zip(live, saved, strict=True):
        bits = _bits(tensor)
        kept, old, fresh = groups.setdefault(bits.dtype, ([], [], []))
        if before is None:
            fresh.append(bits)
        else:
            kept.append(bits)
            old.append(before)
    for dtype, (kept, old, fresh) in groups.items():
        factor = keep.to(dtype)
        if fresh:
            torch._foreach_mul_(fresh, factor)
        if kept:
            torch._foreach_mul_(kept, factor)
            torch._foreach_mul_(old, 1 - factor)
            torch._foreach_add_(kept, old)


def _tensors(optimizer: torch.optim.Optimizer) -> dict[tuple[int, str], torch.Tensor]:
    """Every tensor an optimiser step may change: the parameters and their state."""
    found = {}
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            found[(id(parameter), "")] = parameter
            for key, value in optimizer.state.get(parameter, {}).items():
                if torch.is_tensor(value):
                    found[(id(parameter), key)] = value
    return found


def guarded_step(optimizer: torch.optim.Optimizer, keep: torch.Tensor) -> None:
    """`optimizer.step()`, undone on the device where `keep` (a bool tensor) is false.

    State that the step creates (its first one) is zeroed when undone: Adam's and Adadelta's
    state starts at zero, so the next step continues exactly as if none had been made.
    """
    before = _tensors(optimizer)
    copies = torch._foreach_add([_bits(tensor) for tensor in before.values()], 0)
    saved = dict(zip(before, copies, strict=True))
    optimizer.step()
    after = _tensors(optimizer)
    _select_(list(after.values()), [saved.get(key) for key in after], keep)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors of an optimiser's state (Adam's moments, Adadelta's averages, step counts)."""
    return [
        value
        for per_parameter in optimizer.state.values()
        for value in per_parameter.values()
        if torch.is_tensor(value)
    ]


def finite_flags(groups: dict[str, list[torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Per group, 1.0 if every floating tensor in it is finite, else 0.0: a float tensor on
    `device`, not read here. The largest magnitude of each tensor (an inf-norm: inf or NaN exactly
    where the tensor holds one, never an overflow of finite values) comes from multi-tensor
    kernels, so the check is a few launches for all the weights, and the caller's one read of the
    flags is its only host sync."""
    flags = []
    for tensors in groups.values():
        floating = [tensor.detach() for tensor in tensors if tensor.is_floating_point()]
        floating = [tensor for tensor in floating if tensor.numel()]
        if not floating:
            flags.append(torch.ones((), device=device))
            continue
        maxima = torch._foreach_norm(floating, float("inf"))
        stacked = torch.stack([value.to(device, torch.float32) for value in maxima])
        flags.append(torch.isfinite(stacked).all().float())
    return torch.stack(flags)


def place_for_device_steps(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """On CUDA, optimisers run `capturable`: their step counts live on the GPU, so undoing a step
    and the bias corrections need no host value. Also after loading state saved elsewhere."""
    capturable = device.type == "cuda"
    for group in optimizer.param_groups:
        if "capturable" in group:
            group["capturable"] = capturable
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if torch.is_tensor(state.get("step")):
                place = parameter.device if capturable else torch.device("cpu")
                state["step"] = state["step"].to(place, torch.float32)


@dataclass(frozen=True)
class HealthReading:
    skipped: int  # updates skipped so far in the run
    storm: tuple[int, int, str] | None  # (step, non-finite in a row, net) when the limit was hit
    corrupt_samples: int = 0  # this rank's share of the corrupt samples or shards skipped


class Health:
    """Non-finite updates counted on the device: skipped in all, in a row, and the first step at
    whose end the in-a-row count reached the run's limit. Beside them, on the host, the corrupt
    samples or shards this rank's loader skipped (the loader counts them on the host anyway)."""

    _SKIPPED, _IN_A_ROW, _LAST_BAD, _STORM_STEP, _STORM_COUNT, _STORM_NET = range(6)

    def __init__(self) -> None:
        self.counters: torch.Tensor | None = None  # int64 [6], on the device of the first flag
        self.skipped_before = 0  # restored from a checkpoint
        # Rank 0 also holds the run's total restored from a checkpoint, so a sum over ranks is
        # the run's total.
        self.corrupt_samples = 0

    def restart(self) -> None:
        """Forget the device counters (after a rollback: the checkpoint's counts stand again)."""
        self.counters = None

    def record(self, applied: torch.Tensor, net: str) -> None:
        """Count one update: `applied` is the bool tensor the backend returned for `net`."""
        if self.counters is None:
            self.counters = torch.zeros(6, dtype=torch.int64, device=applied.device)
        counters, bad = self.counters, applied.logical_not().long()
        counters[self._SKIPPED].add_(bad)
        counters[self._IN_A_ROW].add_(1).mul_(bad)
        last_bad = counters[self._LAST_BAD]
        last_bad.copy_(torch.where(applied, last_bad, NET_NAMES.index(net)))

    def end_step(self, step: int, limit: int) -> None:
        """After step `step` (counted from 1): remember it if the limit is reached first here."""
        if self.counters is None:
            return
        counters = self.counters
        first = (counters[self._IN_A_ROW] >= limit) & (counters[self._STORM_STEP] == 0)
        for index, value in (
            (self._STORM_COUNT, counters[self._IN_A_ROW]),
            (self._STORM_NET, counters[self._LAST_BAD]),
            (self._STORM_STEP, step),
        ):
            counters[index].copy_(torch.where(first, value, counters[index]))

    def read(self) -> HealthReading:
        """The counters on the host: one transfer, so call it where the loop syncs anyway."""
        if self.counters is None:
            return HealthReading(self.skipped_before, None, self.corrupt_samples)
        values = self.counters.tolist()
        storm = None
        if values[self._STORM_STEP]:
            storm = (
                values[self._STORM_STEP],
                values[self._STORM_COUNT],
                NET_NAMES[values[self._STORM_NET]],
            )
        return HealthReading(
            self.skipped_before + values[self._SKIPPED], storm, self.corrupt_samples
        )
