"""Debian packages that some test groups need (Slurm, Chromium): installed with apt-get when their
binaries are missing and this is root, so CI on a fresh machine runs those groups instead of
skipping them.

    python tests/system_packages.py browser    # chromium + chromium-driver (make test-browser)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

APT_TIMEOUT_S = 600
# group -> (Debian packages, the binaries that show they are installed)
GROUPS = {
    "browser": (("chromium", "chromium-driver"), ("chromium", "chromedriver")),
    "slurm": (
        ("slurm-wlm", "munge"),
        ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "srun"),
    ),
}


def sbin_path() -> str:
    """PATH with the sbin directories, where Debian puts the daemons."""
    return os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def missing(binaries: tuple[str, ...]) -> list[str]:
    return [name for name in binaries if shutil.which(name, path=sbin_path()) is None]


def install(group: str) -> str | None:
    """Install `group`'s packages when any of its binaries is missing; returns why they are still
    missing (not root, no apt-get, apt-get failed), or None when everything is there."""
    packages, binaries = GROUPS[group]
    absent = missing(binaries)
    if not absent:
        return None
    if os.geteuid() != 0:
        return f"{', '.join(absent)} missing: install {' '.join(packages)} (as root)"
    if shutil.which("apt-get") is None:
        return f"{', '.join(absent)} missing and apt-get is absent"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False
        )
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
            return f"{' '.join(command)} failed: {' '.join(tail)}"
    absent = missing(binaries)
    return f"still missing after apt-get install: {', '.join(absent)}" if absent else None


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in GROUPS:
        print(f"usage: system_packages.py {{{','.join(GROUPS)}}}", file=sys.stderr)
        return 2
    reason = install(argv[0])
    if reason:
        print(f"system_packages: {reason}", file=sys.stderr)
        return 1
    print(f"system_packages: {argv[0]} packages present")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
