"""A real Slurm on this machine for the tests: munged, slurmctld and one or more slurmd, all state
under one temporary directory, started here and stopped by pid.

Root only (the daemons run as root and munge). Debian's `slurm-wlm` and `munge` packages are
installed when missing and apt-get is there; otherwise `install()` says why, and the tests skip. Two nodes are emulated on one host by two
slurmd (`slurmd -N NAME`, each on its own port), which Debian's build allows.

    python tests/slurm_cluster.py install      # apt-get install when missing (make test-slurm)
    python tests/slurm_cluster.py up [NODES]   # start a cluster, print SLURM_CONF, wait for ^C
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import system_packages


def install() -> str | None:
    """Install Slurm and munge when missing; returns why the Slurm tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "the Slurm tests start munged, slurmctld and slurmd: run them as root"
    return system_packages.install("slurm")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SlurmCluster:
    """munged + slurmctld + `len(nodes)` slurmd on this host; `env` is what clients need."""

    def __init__(
        self,
        nodes: int = 1,
        cpus_per_node: int | None = None,
        kill_wait_s: int = 30,
        cred_expire_s: int = 10,
    ):
        self.root = Path(tempfile.mkdtemp(prefix="ganpaint-slurm-"))
        self.root.chmod(0o755)  # munged runs as the munge user and must reach its directory
        self.host = socket.gethostname()
        # Node names must resolve (the launch plan's main address is the first node's name):
        # one host answers to both its own name and localhost.
        self.nodes = [self.host, "localhost"][:nodes]
        self.cpus = cpus_per_node or os.cpu_count() or 1
        self.kill_wait_s = kill_wait_s
        self.cred_expire_s = cred_expire_s
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        self.daemons: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": system_packages.sbin_path()}

    # Start: munged, then slurmctld, then the slurmd; each in the foreground so its pid is ours.
    def start(self, timeout_s: float = 60) -> SlurmCluster:
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
            for node in self.nodes:
                self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-f", str(self.conf), "-N", node])
            self._wait_idle(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        directory = self.socket.parent
        directory.mkdir()
        directory.chmod(0o755)  # munged: clients need execute permission on the socket directory
        key = directory / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        for path in (directory, key):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        files = {
            "--key-file": key,
            "--socket": self.socket,
            "--pid-file": directory / "munged.pid",
            "--log-file": directory / "munged.log",
            "--seed-file": directory / "munged.seed",
        }
        arguments = [f"{flag}={path}" for flag, path in files.items()]
        self._spawn("munged", ["munged", "--foreground", *arguments], user=munge.pw_uid)
        self._wait_for(self.socket.exists, 20, "munged did not create its socket")

    def _write_conf(self) -> None:
        state = self.root / "state"
        (state / "ctld").mkdir(parents=True)
        for node in self.nodes:
            (state / node).mkdir()
        lines = [
            "ClusterName=ganpaint",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            # cred_expire is also how long a requeued job waits before it may start again.
            f"AuthInfo=cred_expire={self.cred_expire_s},socket={self.socket}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ReturnToService=2",
            "JobRequeue=1",
            # Start requeued jobs as soon as they may (the defaults poll every 30-60 s).
            "SchedulerParameters=bf_interval=1,sched_interval=1",
            f"KillWait={self.kill_wait_s}",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MailProg=/bin/true",
            f"StateSaveLocation={state / 'ctld'}",
            f"SlurmdSpoolDir={state}/%n",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root}/slurmd-%n.pid",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root}/slurmd-%n.log",
        ]
        for node in self.nodes:
            lines.append(
                f"NodeName={node} NodeHostname={self.host} NodeAddr=127.0.0.1 "
                f"Port={_free_port()} CPUs={self.cpus} State=UNKNOWN"
            )
        lines.append(f"PartitionName=debug Nodes={','.join(self.nodes)} Default=YES State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str], user: int | None = None) -> None:
        log = open(self.root / f"{name}.out", "ab")  # noqa: SIM115 (closed with the process)
        self.daemons[name] = subprocess.Popen(
            argv,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=user,
            start_new_session=True,
        )
        log.close()

    def _wait_for(self, ready, timeout_s: float, failure: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [name for name, daemon in self.daemons.items() if daemon.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{failure} ({', '.join(dead) or 'timeout'}): see {self.root}")
            time.sleep(0.2)

    def _wait_idle(self, timeout_s: float) -> None:
        def idle() -> bool:
            done = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False)
            states = dict(line.split() for line in done.stdout.splitlines())
            return all(states.get(node) == "idle" for node in self.nodes)

        self._wait_for(idle, timeout_s, "nodes did not become idle")

    # Use.
    def run(self, argv: list[str], check: bool = True, timeout_s: float = 30, **options):
        """Run a Slurm client command against this cluster; `env` entries are added to ours."""
        env = {**self.env, **options.pop("env", {})}
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout_s, **options
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def submit(self, argv: list[str], **options) -> str:
        """sbatch ARGV; returns the job id."""
        return self.run(["sbatch", "--parsable", *argv], **options).stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        shown = self.run(["scontrol", "show", "job", "--oneliner", job_id]).stdout
        return dict(item.split("=", 1) for item in shown.split() if "=" in item)

    # Stop: kill the jobs left, then end each daemon we started, newest first; remove the state.
    def stop(self) -> None:
        try:
            if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
                self.run(["scancel", "--full", "--signal=KILL", "--user=root"], check=False)
                self._wait_for(self._no_jobs_left, 60, "jobs survived scancel --signal=KILL")
        finally:
            for daemon in reversed(self.daemons.values()):
                if daemon.poll() is None:
                    daemon.send_signal(signal.SIGTERM)
                    try:
                        daemon.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        daemon.kill()
                        daemon.wait(timeout=15)
            shutil.rmtree(self.root, ignore_errors=True)

    def _no_jobs_left(self) -> bool:
        listed = self.run(["squeue", "-h", "-o", "%i %T"], check=False).stdout.split("\n")
        return not [line for line in listed if line.strip()]


def main(argv: list[str]) -> int:
    if argv[:1] == ["install"]:
        reason = install()
        print(reason or "Slurm is installed")
        return 1 if reason else 0
    if argv[:1] == ["up"]:
        cluster = SlurmCluster(nodes=int(argv[1]) if len(argv) > 1 else 1).start()
        print(f"export SLURM_CONF={cluster.conf}   # logs in {cluster.root}", flush=True)
        stops = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # after the start: daemons keep theirs
        try:
            signal.sigwait(stops)
        finally:
            cluster.stop()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
