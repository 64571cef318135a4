"""launch/: accelerate configs, SLURM scripts (dry run and a real stop + requeue), signal relay."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import launch_command_parser
from slurm_jobs import TINY_JOB

from ganpaint.errors import UserError
from ganpaint.launch_plan import PORT_BASE, PORT_SPAN, StopRelay, expand_hostlist

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"

# file -> (distributed_type, num_processes, mixed_precision, ZeRO stage); -1 = must be passed.
# mixed_precision is "no" everywhere: the training config's run.mixed_precision decides.
EXPECTED_CONFIGS = {
    "1gpu.yaml": ("NO", 1, "no", None),
    "8gpu.yaml": ("MULTI_GPU", 8, "no", None),
    "multinode.yaml": ("MULTI_GPU", -1, "no", None),
    "deepspeed_zero1.yaml": ("DEEPSPEED", 8, "no", 1),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, "no", 2),
    "cpu2.yaml": ("MULTI_GPU", 2, "no", None),
}


def test_launch_dir_holds_exactly_the_documented_configs():
    assert sorted(path.name for path in LAUNCH.glob("*.yaml")) == sorted(EXPECTED_CONFIGS)


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIGS))
def test_config_loads_with_accelerates_own_loader(name):
    distributed, processes, precision, zero_stage = EXPECTED_CONFIGS[name]
    loaded = load_config_from_file(str(LAUNCH / name))  # rejects unknown keys and enum values
    assert loaded.distributed_type.value == distributed
    assert loaded.num_processes == processes
    assert loaded.mixed_precision == precision
    if zero_stage is None:
        assert loaded.deepspeed_config == {}
    else:
        assert loaded.deepspeed_config["zero_stage"] == zero_stage
        # Each node starts its own processes (srun), not pdsh over ssh.
        assert loaded.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
        # accelerate launch copies these keys onto its own options: each must be one.
        options = vars(launch_command_parser().parse_args(["x.py"]))
        assert set(loaded.deepspeed_config) <= set(options)


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("gpu[01-03],gpu07", ["gpu01", "gpu02", "gpu03", "gpu07"]),
        ("node1", ["node1"]),
        ("n[9-11]", ["n9", "n10", "n11"]),
        ("x[1,3-4]y", ["x1y", "x3y", "x4y"]),
        ("r[1-2]-g[08-09]", ["r1-g08", "r1-g09", "r2-g08", "r2-g09"]),
        ("a,b[2-3],c", ["a", "b2", "b3", "c"]),
    ],
)
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["gpu[01-03", "gpu[3-1]", "gpu[a-b]", "a,,b", "g[[1]]"])
def test_expand_hostlist_rejects_malformed(nodelist):
    with pytest.raises(UserError, match="nodelist"):
        expand_hostlist(nodelist)


@functools.cache
def _path_without_scontrol() -> str:
    """PATH with each directory that holds scontrol (often /usr/bin, next to bash) replaced by a
    mirror of its other programs."""
    parts = []
    for part in os.environ["PATH"].split(os.pathsep):
        if (Path(part) / "scontrol").exists():
            mirror = Path(tempfile.mkdtemp(prefix="path-without-scontrol-"))
            atexit.register(shutil.rmtree, mirror, True)
            for program in Path(part).iterdir():
                if program.name != "scontrol":
                    (mirror / program.name).symlink_to(program)
            part = str(mirror)
        parts.append(part)
    return os.pathsep.join(parts)


def _env_without_scontrol(extra: dict[str, str]) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    return {**env, "PATH": _path_without_scontrol(), **extra}


def _run_script(script: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", f"launch/slurm/{script}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _node_commands(stdout: str) -> dict[int, tuple[str, list[str]]]:
    """'node R HOST: cmd' lines -> {R: (HOST, argv)}."""
    nodes = {}
    for line in stdout.splitlines():
        if line.startswith("node "):
            head, command = line.split(": ", 1)
            _, rank, host = head.split()
            nodes[int(rank)] = (host, shlex.split(command))
    return nodes


def _accelerate_args(argv: list[str]):
    """Parse a node's argv with accelerate's own launch parser."""
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    return launch_command_parser().parse_args(argv[3:])


OVERRIDES = ["run.dir=/scratch/my run", "optim.generator_lr=0.5"]


def test_multinode_dry_run_gives_every_node_its_rank():
    env = _env_without_scontrol(
        {
            "DRY_RUN": "1",
            "SLURM_JOB_ID": "4321",
            "SLURM_JOB_NODELIST": "gpu[01-03],gpu07",
            "SLURM_NNODES": "4",
            "SLURM_GPUS_ON_NODE": "8",
        }
    )
    done = _run_script("multinode.sbatch", ["configs/glcic_paper.yaml", *OVERRIDES], env)
    assert done.returncode == 0, done.stderr
    nodes = _node_commands(done.stdout)
    assert [nodes[rank][0] for rank in range(4)] == ["gpu01", "gpu02", "gpu03", "gpu07"]
    for rank, (_, argv) in nodes.items():
        args = _accelerate_args(argv)
        assert args.config_file == "launch/multinode.yaml"
        assert (args.num_machines, args.num_processes, args.machine_rank) == (4, 32, rank)
        assert args.main_process_ip == "gpu01"
        assert args.main_process_port == PORT_BASE + 4321 % PORT_SPAN
        assert args.training_script == "train.py"
        assert args.training_script_args == ["--config", "configs/glcic_paper.yaml", *OVERRIDES]
    assert "run dir /scratch/my run" in done.stdout


@pytest.mark.parametrize(
    ("gpus", "extra", "expected_config"),
    [
        ("4", {}, "launch/8gpu.yaml"),
        ("1", {}, "launch/1gpu.yaml"),
        ("8", {"ACCELERATE_CONFIG": "launch/deepspeed_zero2.yaml"}, "launch/deepspeed_zero2.yaml"),
    ],
)
def test_single_node_dry_run_picks_the_config(gpus, extra, expected_config):
    env = _env_without_scontrol(
        {
            "SLURM_JOB_ID": "99",
            "SLURM_JOB_NODELIST": "box",
            "SLURM_NNODES": "1",
            "SLURM_GPUS_ON_NODE": gpus,
            **extra,
        }
    )
    done = _run_script("single_node.sbatch", ["--dry-run", "configs/demo.yaml"], env)
    assert done.returncode == 0, done.stderr
    ((host, argv),) = _node_commands(done.stdout).values()
    args = _accelerate_args(argv)
    assert (host, args.config_file, args.num_processes) == ("box", expected_config, int(gpus))


def test_scontrol_expands_the_nodelist_where_installed(tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "alpha\\nbeta\\n"\n')
    fake.chmod(0o755)
    env = _env_without_scontrol(
        {
            "SLURM_JOB_ID": "5",
            "SLURM_JOB_NODELIST": "whatever[1-2]",
            "SLURM_NNODES": "2",
            "SLURM_GPUS_ON_NODE": "2",
        }
    )
    env["PATH"] = f"{tmp_path}{os.pathsep}{env['PATH']}"
    done = _run_script("multinode.sbatch", ["--dry-run", "configs/demo.yaml"], env)
    assert done.returncode == 0, done.stderr
    nodes = _node_commands(done.stdout)
    assert [nodes[0][0], nodes[1][0]] == ["alpha", "beta"]
    assert _accelerate_args(nodes[1][1]).main_process_ip == "alpha"


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["configs/demo.yaml", "bogus.key=1"], {"DRY_RUN": "1"}, "'bogus'"),
        (["configs/nope.yaml"], {"DRY_RUN": "1"}, "configs/nope.yaml"),
        (["configs/demo.yaml"], {"DRY_RUN": "1", "SLURM_JOB_ID": ""}, "SLURM_JOB_ID"),
        (["configs/demo.yaml"], {"DRY_RUN": "1", "SLURM_GPUS_ON_NODE": ""}, "--gpus-per-node"),
        (["configs/demo.yaml"], {"DRY_RUN": "1", "SLURM_NNODES": "3"}, "SLURM_NNODES=3"),
        (["configs/demo.yaml"], {"SLURM_JOB_ID": ""}, "not inside a SLURM job"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_launch(args, env, needle):
    base = {
        "SLURM_JOB_ID": "5",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "2",
    }
    done = _run_script("multinode.sbatch", args, _env_without_scontrol({**base, **env}))
    assert done.returncode == 2
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "node 0" not in done.stdout


# A stand-in for torchrun: workers in sessions of their own, each with a child in its process
# group (as a DataLoader worker is). The launcher dies of SIGUSR1, as torchrun's agent does.
LAUNCHER = """
import subprocess, sys
workers = [subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2], str(rank)],
                            start_new_session=True) for rank in range(2)]
sys.exit(max(worker.wait() for worker in workers))
"""
WORKER = """
import signal, subprocess, sys, time
from pathlib import Path
stop = []
signal.signal(signal.SIGUSR1, lambda number, frame: stop.append(number))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # as the training loop does
loader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
out = Path(sys.argv[1])
(out / f"ready-{sys.argv[2]}").write_text("")
while not stop:
    time.sleep(0.05)
(out / f"stopped-{sys.argv[2]}").write_text(f"loader alive: {loader.poll() is None}")
loader.kill()
"""


def test_stop_relay_signals_the_training_processes_only(tmp_path):
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    (tmp_path / "worker.py").write_text(WORKER)
    command = [
        sys.executable,
        str(tmp_path / "launcher.py"),
        str(tmp_path / "worker.py"),
        str(tmp_path),
    ]
    relay = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from ganpaint.launch_plan import StopRelay; "
            f"sys.exit(StopRelay().run({command!r}, poll_s=0.05))",
        ],
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    relay.send_signal(signal.SIGUSR1)
    assert relay.wait(timeout=30) == 0  # the launcher was not signalled: it would exit 138
    assert [(tmp_path / f"stopped-{rank}").read_text() for rank in range(2)] == [
        "loader alive: True"
    ] * 2


def test_stop_relay_starts_the_launcher_with_the_stop_signals_blocked(tmp_path):
    # SLURM signals every process of the job step: the launcher must not die of it.
    report = tmp_path / "mask"
    script = (
        "import signal, sys; blocked = signal.pthread_sigmask(signal.SIG_BLOCK, []); "
        "open(sys.argv[1], 'w').write(' '.join(sorted(number.name for number in blocked)))"
    )
    with StopRelay() as relay:
        assert relay.run([sys.executable, "-c", script, str(report)], poll_s=0.05) == 0
    assert {"SIGTERM", "SIGUSR1"} <= set(report.read_text().split())
    assert not {signal.SIGTERM, signal.SIGUSR1} & signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_stop_relay_reports_a_death_by_signal():
    with StopRelay() as relay:
        assert relay.run([sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"]) == 128 + 9
        assert signal.getsignal(signal.SIGUSR1) == relay._record  # kept until the supervisor ends
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # restored on leaving


# Stand-ins for the SLURM binaries: srun runs its one task here (forwarding signals, writing the
# task's output where --output says); scontrol records requeues.
FAKE_SRUN = r"""#!/bin/bash
output=
while [[ $1 == --* ]]; do
    case $1 in --output=*) output=${1#--output=} ;; esac
    shift
done
output=${output//%j/$SLURM_JOB_ID}
output=${output//%n/0}
SLURM_NODEID=0 "$@" >>"$output" 2>&1 &
task=$!
trap 'kill -USR1 $task' USR1 TERM
while :; do
    wait $task; status=$?
    kill -0 $task 2>/dev/null || exit $status
done
"""
FAKE_SCONTROL = """#!/bin/sh
case "$1 $2" in
    "show hostnames") echo "$3" ;;
    *) echo "$@" >> "$(dirname "$0")/scontrol.log" ;;
esac
"""

TINY = [
    *TINY_JOB,
    "schedule.completion_steps=4",
    "schedule.discriminator_steps=2",
    "schedule.total_steps=100000",
    "checkpoint.every_steps=100000",
]


def _submit_and_stop(env: dict[str, str], args: list[str], stats: Path, lines: int) -> str:
    """Run the batch script until stats.jsonl holds `lines` lines, then send SLURM's USR1."""
    batch = subprocess.Popen(
        ["bash", "launch/slurm/single_node.sbatch", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and batch.poll() is None:
        if stats.exists() and stats.read_text().count("\n") >= lines:
            break
        time.sleep(0.5)
    batch.send_signal(signal.SIGUSR1)
    output = batch.communicate(timeout=240)[0]
    assert batch.returncode == 0, output
    return output


def _saved_steps(run: Path) -> list[int]:
    return sorted(int(path.name.split("-")[1]) for path in (run / "checkpoints").glob("step-*"))


@pytest.mark.slow
def test_sbatch_stop_signal_checkpoints_requeues_and_resumes(tmp_path):
    """The real batch script, accelerate launch and loop on 2 CPU processes; fake srun/scontrol."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    shards, run = tmp_path / "shards", tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ganpaint.cli",
            "shards",
            "--source",
            "synthetic",
            "--count",
            "48",
            "--size",
            "32",
            "--output",
            str(shards),
            "--split-max-count",
            "12",
            "--workers",
            "1",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    env = _env_without_scontrol(
        {
            "SLURM_JOB_ID": "77",
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_NNODES": "1",
            "GPUS_PER_NODE": "2",
            "ACCELERATE_CONFIG": "launch/cpu2.yaml",
            "MAIN_PORT": "0",
            "SLURM_SUBMIT_DIR": str(ROOT),
        }
    )
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    args = ["configs/demo.yaml", f"run.dir={run}", f"data.shards={shards}", *TINY]
    stats, logs = run / "stats.jsonl", run / "logs"

    # First attempt: stopped past step 10, checkpointed at the stop, requeued.
    _submit_and_stop(env, args, stats, lines=2)
    assert (bin_dir / "scontrol.log").read_text().split() == ["requeue", "77"]
    stopped_at = _saved_steps(run)[-1]
    assert stopped_at >= json.loads(stats.read_text().splitlines()[-1])["step"] > 6
    node_log = (logs / "slurm-77-node0.out").read_text()
    assert "passed SIGUSR1 on to training processes" in node_log
    assert f"checkpoint saved at step {stopped_at}" in node_log
    assert "requeueing job 77" in (logs / "slurm-77-batch.out").read_text()

    # The requeued job: same arguments, resumes from that checkpoint; logs are appended.
    lines = stats.read_text().count("\n")
    _submit_and_stop({**env, "SLURM_RESTART_COUNT": "1"}, args, stats, lines=lines + 2)
    assert (bin_dir / "scontrol.log").read_text().split() == ["requeue", "77"] * 2
    node_log = (logs / "slurm-77-node0.out").read_text()
    assert f"at step {stopped_at} " in node_log.split("resumed", 1)[1].splitlines()[0]
    assert _saved_steps(run)[-1] > stopped_at
    assert "(restart 1)" in (logs / "slurm-77-batch.out").read_text()
