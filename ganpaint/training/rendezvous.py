"""Joining the process group without waiting for ever: the launcher's variables checked, and the
rendezvous bounded by run.rendezvous_timeout_s.

A process that sees WORLD_SIZE > 1 joins a group of that many processes, meeting at rank 0's TCP
store (MASTER_ADDR:MASTER_PORT). Left to themselves, torch and accelerate wait there for as long
as the collective timeout (30 minutes), or for ever when a stray WORLD_SIZE/RANK in a shell has no
peers at all. So:

- WORLD_SIZE > 1 without RANK, LOCAL_RANK, MASTER_ADDR or MASTER_PORT is refused in one line
  naming the missing ones (a launcher sets all five).
- A rank other than 0 first waits for rank 0's store to accept a connection, at most the timeout;
  torch's own client would retry silently for as long, then print C++ stack traces.
- The group is formed with the timeout as its init timeout (rank 0's store waits that long for
  the others, every rank that long for the group's keys), and a failure to form it is one line.
- Once formed, the group's collective timeout goes back to torch's default: a rank may wait far
  longer than a rendezvous at a collective (another rank compiling, validating, writing a
  checkpoint), and that wait must not end the run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import timedelta

import torch.distributed as dist
from accelerate.utils import InitProcessGroupKwargs

from ganpaint.config import ConfigError, RunConfig
from ganpaint.errors import UserError

LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
RETRY_S = 0.5


class RendezvousFailed(UserError):
    """The process group did not form within run.rendezvous_timeout_s."""


def world_size(environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        return int(environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={environ['WORLD_SIZE']!r} is not a whole number") from None


def check_launch_variables(environ: Mapping[str, str] | None = None) -> None:
    """Refuse WORLD_SIZE > 1 without the other variables a launcher sets (one line)."""
    environ = os.environ if environ is None else environ
    processes = world_size(environ)
    missing = [name for name in LAUNCH_VARIABLES if not environ.get(name)]
    if processes > 1 and missing:
        verb = "is" if len(missing) == 1 else "are"
        raise ConfigError(
            f"WORLD_SIZE is {processes} but {', '.join(missing)} {verb} not set: start every "
            "process with a launcher (accelerate launch, torchrun, launch/slurm/), or unset "
            "WORLD_SIZE to train in one process"
        )


def process_group_kwargs(run: RunConfig, backend: str | None = None) -> InitProcessGroupKwargs:
    """accelerate's process-group settings: the rendezvous timeout (and `backend` if given)."""
    timeout = timedelta(seconds=run.rendezvous_timeout_s)
    if backend is None:
        return InitProcessGroupKwargs(timeout=timeout)
    return InitProcessGroupKwargs(backend=backend, timeout=timeout)


def _where(environ: Mapping[str, str]) -> str:
    address = f"{environ.get('MASTER_ADDR')}:{environ.get('MASTER_PORT')}"
    return f"rank {environ.get('RANK')} of {environ.get('WORLD_SIZE')} at {address}"


def wait_for_rank_zero(timeout_s: float, environ: Mapping[str, str] | None = None) -> None:
    """A rank other than 0: wait until rank 0's store accepts connections, or RendezvousFailed
    after `timeout_s` (the probe's connection is closed at once; the store ignores it)."""
    environ = os.environ if environ is None else environ
    address, port = environ["MASTER_ADDR"], int(environ["MASTER_PORT"])
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((address, port), timeout=max(0.1, min(5.0, remaining))):
                return
        except OSError as error:
            if time.monotonic() + RETRY_S >= deadline:
                raise RendezvousFailed(
                    f"{_where(environ)}: rank 0 did not answer within {timeout_s:g} s "
                    f"({error.strerror or error}): start every process of the launch, check "
                    "MASTER_ADDR/MASTER_PORT, or raise run.rendezvous_timeout_s"
                ) from None
        time.sleep(RETRY_S)


@contextmanager
def bounded(run: RunConfig, environ: Mapping[str, str] | None = None) -> Iterator[None]:
    """Around the Accelerator's creation (which forms the group): the checks above, a failure to
    form the group as one line, and torch's collective timeout restored once it is formed."""
    environ = os.environ if environ is None else environ
    check_launch_variables(environ)
    joining = world_size(environ) > 1
    if joining and environ.get("RANK") != "0":
        wait_for_rank_zero(run.rendezvous_timeout_s, environ)
    try:
        yield
    except dist.DistError as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise RendezvousFailed(
            f"{_where(environ)}: the process group did not form within "
            f"{run.rendezvous_timeout_s:g} s ({first[:200]}): start every process of the launch, "
            "or raise run.rendezvous_timeout_s"
        ) from None
    if joining and dist.is_available() and dist.is_initialized():
        restore_collective_timeout()


def restore_collective_timeout() -> None:
    """The default group's timeout back to torch's default for its backend."""
    from torch.distributed import constants, distributed_c10d

    set_timeout = getattr(dist, "set_timeout", None) or getattr(
        distributed_c10d, "_set_pg_timeout", None
    )
    if set_timeout is None:  # a torch that cannot: collectives keep the rendezvous bound
        return
    default_for = getattr(distributed_c10d, "_get_default_timeout", None)
    backend = dist.get_backend()
    set_timeout(default_for(backend) if default_for else constants.default_pg_timeout)
