"""SLURM launch plans: the `accelerate launch` command of every node, and the per-node supervisor.

launch/slurm/*.sbatch call this module (it imports neither torch nor accelerate, so it starts fast):

    python -m ganpaint.launch_plan run-dir --config C [key=value ...]  # print the run directory
    python -m ganpaint.launch_plan plan    --config C [key=value ...]  # every node's command
    python -m ganpaint.launch_plan node    --config C [key=value ...]  # run this node's command

The job comes from SLURM's environment (SLURM_JOB_ID, SLURM_JOB_NODELIST, SLURM_NNODES,
SLURM_GPUS_ON_NODE; SLURM_NODEID for `node`); setting those by hand gives a dry run anywhere.
Optional knobs: GPUS_PER_NODE, MAIN_PORT, ACCELERATE_CONFIG (e.g. launch/deepspeed_zero2.yaml).

`node` is what srun starts on each node. SLURM delivers a job step's signals to every process of
the step (the whole process tree, sessions and process groups notwithstanding), so `node` handles
SIGUSR1 / SIGTERM itself and starts `accelerate launch` with them blocked: the torchrun agent inside
it would die of SIGUSR1 and SIGKILL its workers 30 s after a SIGTERM. The training processes
inherit the block and lift it once their handlers are in place (a signal that came before is
delivered then); DataLoader workers ignore both. `node` also passes each signal it gets on to the
training processes (the launcher's children), for clusters that signal the task alone. The loop
then finishes its step, checkpoints, writes RUN_DIR/stopped_by_signal and exits 0, and the batch
script requeues the job.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ganpaint.errors import UserError

# A fixed port per job, derived from the job id so that two jobs sharing a node do not collide;
# the range stays below Linux's ephemeral ports (32768+).
PORT_BASE, PORT_SPAN = 20000, 10000
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_BRACKETS = re.compile(r"\[([^\]]*)\]")


@dataclass(frozen=True)
class SlurmJob:
    """One allocation: hosts in SLURM's node order (node rank i runs on hosts[i])."""

    job_id: str
    hosts: tuple[str, ...]
    gpus_per_node: int

    @property
    def nodes(self) -> int:
        return len(self.hosts)

    @property
    def processes(self) -> int:
        return self.nodes * self.gpus_per_node


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: 'a[1,3],b' -> ['a[1,3]', 'b']."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise UserError(f"nodelist {text!r}: unbalanced brackets")
        if char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth:
        raise UserError(f"nodelist {text!r}: unbalanced brackets")
    return parts + [text[start:]]


def _range_items(spec: str, nodelist: str) -> list[str]:
    """'01-03,7' -> ['01', '02', '03', '7']: zero padding follows the range's lower bound."""
    items = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise UserError(f"nodelist {nodelist!r}: bad range {part!r}")
        stop = int(high) if high else int(low)
        if stop < int(low):
            raise UserError(f"nodelist {nodelist!r}: empty range {part!r}")
        items += [str(number).zfill(len(low)) for number in range(int(low), stop + 1)]
    return items


def expand_hostlist(nodelist: str) -> list[str]:
    """SLURM hostlist syntax without scontrol: 'gpu[01-03],gpu07' -> gpu01, gpu02, gpu03, gpu07.

    Several bracket groups in one name expand as a product, the leftmost group slowest.
    """
    hosts: list[str] = []
    for name in _split_top_level(nodelist.strip()):
        if not name:
            raise UserError(f"nodelist {nodelist!r}: empty host name")
        expanded = [""]
        position = 0
        for match in _BRACKETS.finditer(name):
            prefix = name[position : match.start()]
            expanded = [
                head + prefix + item
                for head in expanded
                for item in _range_items(match.group(1), nodelist)
            ]
            position = match.end()
        hosts += [head + name[position:] for head in expanded]
    return hosts


def hostnames(nodelist: str) -> list[str]:
    """The job's hosts: `scontrol show hostnames` where SLURM is installed, else our expansion."""
    if shutil.which("scontrol") is None:
        return expand_hostlist(nodelist)
    done = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise UserError(f"scontrol show hostnames {nodelist!r} failed: {done.stderr.strip()}")
    return done.stdout.split()


def _gpus_per_node(env: Mapping[str, str]) -> int:
    for key in ("GPUS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        if env.get(key):
            count = env[key].split(":")[-1]  # SLURM_GPUS_PER_NODE may read 'a100:8'
            if count.isdigit() and int(count) > 0:
                return int(count)
            raise UserError(f"{key}={env[key]!r} is not a GPU count")
    raise UserError("GPUs per node unknown: submit with --gpus-per-node=G (or set GPUS_PER_NODE)")


def job_from_env(env: Mapping[str, str]) -> SlurmJob:
    """Read the allocation from SLURM's variables; a missing one is named in the error."""
    for key in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST"):
        if not env.get(key):
            raise UserError(
                f"{key} is not set: submit with sbatch, or set SLURM_JOB_ID, "
                "SLURM_JOB_NODELIST, SLURM_NNODES and SLURM_GPUS_ON_NODE for a dry run"
            )
    hosts = tuple(hostnames(env["SLURM_JOB_NODELIST"]))
    nodes = env.get("SLURM_NNODES", str(len(hosts)))
    if nodes != str(len(hosts)):
        raise UserError(
            f"SLURM_NNODES={nodes} but SLURM_JOB_NODELIST="
            f"{env['SLURM_JOB_NODELIST']!r} names {len(hosts)} host(s)"
        )
    return SlurmJob(env["SLURM_JOB_ID"], hosts, _gpus_per_node(env))


def main_port(job: SlurmJob, env: Mapping[str, str]) -> int:
    if env.get("MAIN_PORT"):
        return int(env["MAIN_PORT"])
    digits = re.sub(r"\D", "", job.job_id) or "0"  # array jobs read '1234_5'
    return PORT_BASE + int(digits) % PORT_SPAN


def accelerate_config(job: SlurmJob, env: Mapping[str, str]) -> str:
    """ACCELERATE_CONFIG if set, else DDP across nodes, DDP on one node, or one plain process."""
    if env.get("ACCELERATE_CONFIG"):
        return env["ACCELERATE_CONFIG"]
    if job.nodes > 1:
        return "launch/multinode.yaml"
    return "launch/8gpu.yaml" if job.gpus_per_node > 1 else "launch/1gpu.yaml"


def node_command(
    job: SlurmJob,
    node_rank: int,
    config: str,
    overrides: Sequence[str],
    env: Mapping[str, str],
    python: str = sys.executable,
) -> list[str]:
    """The argv node `node_rank` runs: accelerate launch with the job's geometry, then train.py."""
    if not 0 <= node_rank < job.nodes:
        raise UserError(f"node rank {node_rank} is outside this {job.nodes}-node job")
    geometry = {
        "--config_file": accelerate_config(job, env),
        "--num_machines": str(job.nodes),
        "--num_processes": str(job.processes),
        "--machine_rank": str(node_rank),
        "--main_process_ip": job.hosts[0],
        "--main_process_port": str(main_port(job, env)),
    }
    flags = [item for pair in geometry.items() for item in pair]
    launcher = [python, "-m", "accelerate.commands.launch"]
    return [*launcher, *flags, "train.py", "--config", config, *overrides]


def run_dir(config: str, overrides: Sequence[str]) -> Path:
    """The run directory the training config names; loading it rejects a bad config early."""
    # Imported here, not at the top: the node supervisor installs its signal handlers first.
    from ganpaint import config as config_lib

    return Path(config_lib.load(config, list(overrides)).run.dir).absolute()


def plan_lines(
    job: SlurmJob, config: str, overrides: Sequence[str], env: Mapping[str, str]
) -> list[str]:
    """Human-readable plan: a header, then `node R HOST: <shell-quoted command>` per node."""
    lines = [
        f"job {job.job_id}: {job.nodes} node(s) x {job.gpus_per_node} GPU(s) = "
        f"{job.processes} training processes; main process {job.hosts[0]}:"
        f"{main_port(job, env)}; run dir {run_dir(config, overrides)}"
    ]
    for rank, host in enumerate(job.hosts):
        lines.append(
            f"node {rank} {host}: {shlex.join(node_command(job, rank, config, overrides, env))}"
        )
    return lines


def child_pids(parent: int) -> list[int]:
    """Direct children of `parent`, from /proc (Linux)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # Field 4 is the parent pid; the command name before it may hold spaces and ')'.
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            children.append(int(entry.name))
    return children


class StopRelay:
    """Records SIGUSR1 / SIGTERM from the moment it exists; `run` passes them to the workers.

    Create it first thing in a node's supervisor, so that no stop signal falls on a default
    handler (which would end the supervisor and with it the srun task), and keep it until the
    supervisor exits: SLURM may signal again at any moment. As a context manager it restores the
    previous handlers on leaving.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.passed_on = 0  # how many of `received` reached the training processes
        self.launcher: subprocess.Popen | None = None
        self.passing = False
        self.previous = {number: signal.signal(number, self._record) for number in STOP_SIGNALS}

    def __enter__(self) -> StopRelay:
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _record(self, number: int, frame) -> None:
        self.received.append(number)
        # Pass it on at once: the training processes may get the same signal from SLURM, stop
        # and be gone before the next poll, and a later look would find no one to tell.
        self._pass_on_pending()

    def _pass_on_pending(self) -> None:
        # A signal that lands while this runs (SLURM may send several) waits for the next poll:
        # a nested call would print from inside a print.
        if self.passing or self.launcher is None or len(self.received) <= self.passed_on:
            return
        self.passing = True
        try:
            count = len(self.received)
            if _pass_on(self.launcher.pid, self.received[-1]):
                self.passed_on = count
        finally:
            self.passing = False

    def run(self, command: Sequence[str], poll_s: float = 0.2) -> int:
        """Run `command` in its own session; pass each stop signal to its children only.

        Returns the command's exit status (128 + N when signal N killed it). A signal that
        arrives before the launcher has started its training processes waits until they exist.
        """
        # The launcher inherits the stop signals blocked, and its training processes from it:
        # SLURM signals every process of a job step, and the torchrun agent inside
        # `accelerate launch` dies of SIGUSR1 (and kills its workers 30 s after a SIGTERM).
        # The training loop unblocks them once its handlers are in place (StopSignals); a
        # signal that arrives before then waits, blocked, instead of being lost.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            self.launcher = subprocess.Popen(list(command), start_new_session=True)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        while self.launcher.poll() is None:
            self._pass_on_pending()  # signals that came before the training processes existed
            time.sleep(poll_s)
        status = self.launcher.returncode
        self.launcher = None
        return 128 - status if status < 0 else status

    def ignore_from_now_on(self) -> None:
        """Ignore the stop signals for the rest of this process, which has nothing left to stop.

        SLURM keeps signalling a stopping step (scancel: TERM to every process, again and again),
        and Python puts the default handlers back while it shuts down: a TERM in that window
        would end the supervisor as "Terminated" after a clean stop.
        """
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)


def _pass_on(launcher_pid: int, number: int) -> bool:
    """Send signal `number` to the launcher's children; False while it has none yet."""
    workers = child_pids(launcher_pid)
    for pid in workers:
        try:
            os.kill(pid, number)
        except ProcessLookupError:  # a worker that just finished
            pass
    if workers:
        print(
            f"launch_plan: passed {signal.Signals(number).name} on to training processes {workers}",
            file=sys.stderr,
            flush=True,
        )
    return bool(workers)


def _node(config: str, overrides: list[str]) -> int:
    relay = StopRelay()  # first, and kept until this process exits
    env = os.environ
    job = job_from_env(env)
    rank = env.get("SLURM_NODEID", "")
    if not rank.isdigit():
        raise UserError("SLURM_NODEID is not set: `node` runs under srun, one task per node")
    command = node_command(job, int(rank), config, overrides, env)
    run_dir(config, overrides)  # fail here, once per node, rather than in every process
    print(f"node {rank} {job.hosts[int(rank)]}: {shlex.join(command)}", file=sys.stderr, flush=True)
    status = relay.run(command)
    relay.ignore_from_now_on()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ganpaint.launch_plan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["run-dir", "plan", "node"])
    parser.add_argument("--config", required=True, help="configs/NAME.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, passed on unchanged")
    args = parser.parse_intermixed_args(argv)
    try:
        if args.action == "run-dir":
            print(run_dir(args.config, args.overrides))
        elif args.action == "plan":
            job = job_from_env(os.environ)
            print("\n".join(plan_lines(job, args.config, args.overrides, os.environ)))
        else:
            return _node(args.config, args.overrides)
    except UserError as error:
        print(f"launch_plan: error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
