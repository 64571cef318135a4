# Body shared by multinode.sbatch and single_node.sbatch (sourced; not a job script on its own).
#
# Arguments: CONFIG [dotted.key=value ...], passed to train.py unchanged.
# DRY_RUN=1 (or --dry-run as the first argument): print every node's command and exit.
# Environment knobs: GANPAINT_ROOT (repository; default: the directory sbatch was called from),
# PYTHON (default: $GANPAINT_ROOT/.venv/bin/python), ACCELERATE_CONFIG, GPUS_PER_NODE, MAIN_PORT.
#
# Stop and requeue. SIGUSR1 means "stop and come back", SIGTERM means "stop". What SLURM signals
# (measured on Slurm 22.05, tests/test_slurm.py): --signal=B:USR1@N and `scancel --signal=USR1
# --batch` reach this shell alone; srun passes a USR1 on to every process of its job step (the
# whole process tree with proctrack/linuxproc; the cgroup with proctrack/cgroup), and kills the
# step at once when it gets a TERM itself; scancel, the time limit and preemption send TERM to
# every process of the job, and KILL after KillWait. So this shell forwards USR1 (never TERM) to
# srun; the launch_plan node supervisor and the launcher keep the signals handled or blocked, and
# the loop on every rank trains on to its next log tick, saves a checkpoint, writes
# RUN_DIR/stopped_by_signal and exits. That marker, not srun's exit status, says the checkpoint
# is complete: after a USR1 (seen here or by the training) and no TERM, this shell requeues the
# job (#SBATCH --requeue), which resumes from the checkpoint with the same arguments.
set -uo pipefail

dry_run=${DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then
    dry_run=1
    shift
fi
if [ $# -lt 1 ]; then
    echo "usage: sbatch $0 CONFIG [dotted.key=value ...]   (DRY_RUN=1 to print the plan)" >&2
    exit 2
fi
config=$1
shift

if [ "$dry_run" != 1 ] && [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "not inside a SLURM job: submit with sbatch, or set DRY_RUN=1 to print the plan" >&2
    exit 2
fi

root=${GANPAINT_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
cd "$root" || exit 2
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
plan=("$python" -m ganpaint.launch_plan)

if [ "$dry_run" = 1 ]; then
    "${plan[@]}" plan --config "$config" "$@"
    exit $?
fi

# From here on a stop signal is recorded, never fatal: one may come before training starts.
signals_seen=
srun_pid=
on_signal() {
    signals_seen="$signals_seen $1"
    echo "=== $(date '+%F %T.%3N') SIG$1: training checkpoints at its next log tick"
    # USR1 only: srun answers a TERM by killing the job step at once.
    [ -n "$srun_pid" ] && kill -USR1 "$srun_pid" 2>/dev/null
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM
requeue() {
    echo "=== $(date '+%F %T.%3N') $1: requeueing job $SLURM_JOB_ID"
    if ! scontrol requeue "$SLURM_JOB_ID"; then
        echo "=== requeue refused (was the job submitted with --no-requeue?): submit the same command again to resume"
        exit 1
    fi
    exit 0
}

# The run directory is known only once the config is read: the #SBATCH --output file keeps the
# first lines, everything after also goes to RUN_DIR/logs (appended across requeues).
run_dir=$("${plan[@]}" run-dir --config "$config" "$@") || exit 2
log_dir=$run_dir/logs
mkdir -p "$log_dir" || exit 2
# tee ignores the stop signals: were it to die, the shell would die of SIGPIPE on its next echo.
exec > >(trap '' USR1 TERM INT; exec tee -a "$log_dir/slurm-$SLURM_JOB_ID-batch.out") 2>&1
echo "=== $(date '+%F %T.%3N') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)"
"${plan[@]}" plan --config "$config" "$@" || exit 2
marker=$run_dir/stopped_by_signal
rm -f "$marker"

if [ -n "$signals_seen" ]; then  # signalled before training started: nothing to save
    case $signals_seen in *TERM*) exit 0 ;; esac
    requeue "stopped before training started"
fi
# Since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch.
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    --open-mode=append --output="$log_dir/slurm-%j-node%n.out" \
    "${plan[@]}" node --config "$config" "$@" &
srun_pid=$!
[ -n "$signals_seen" ] && kill -USR1 "$srun_pid"  # one that came while srun was being started

# A trapped signal interrupts `wait` (status > 128) while srun runs on: wait again.
while :; do
    seen=$signals_seen
    status=0
    wait "$srun_pid" || status=$?
    if [ "$status" -le 128 ] || [ "$signals_seen" = "$seen" ]; then
        break
    fi
done
echo "=== $(date '+%F %T.%3N') srun exited with status $status"

if [ -f "$marker" ]; then
    read -r stopped_by stopped_at saved <"$marker"
    echo "=== $(date '+%F %T.%3N') training stopped cleanly on $stopped_by at step $stopped_at (checkpoint: $saved)"
    case $signals_seen in *TERM*) exit 0 ;; esac
    case "$signals_seen $stopped_by" in *USR1*) requeue "checkpoint complete" ;; esac
    exit 0
fi
exit "$status"
