"""Process-group teardown shared by every multi-process entry point, and small agreements between
ranks (plain numbers as tensors: nothing is pickled)."""

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import broadcast


def shutdown() -> None:
    """Wait for every rank, then destroy the process group (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main_process_value(accelerator: Accelerator, value: int) -> int:
    """Rank 0's `value` on every rank (collective)."""
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=accelerator.device)
    return int(broadcast(tensor, from_process=0).item())


def sum_over_ranks(accelerator: Accelerator, value: int) -> int:
    """The sum of every rank's `value` (collective)."""
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=accelerator.device)
    return int(accelerator.reduce(tensor, reduction="sum").item())
