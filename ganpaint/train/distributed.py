"""Process-group teardown shared by every multi-process entry point."""

import torch.distributed as dist


def shutdown() -> None:
    """Wait for every rank, then destroy the process group (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
