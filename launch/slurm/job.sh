# Body shared by multinode.sbatch and single_node.sbatch (sourced; not a job script on its own).
#
# Arguments: CONFIG [dotted.key=value ...], passed to train.py unchanged.
# DRY_RUN=1 (or --dry-run as the first argument): print every node's command and exit.
# Environment knobs: GANPAINT_ROOT (repository; default: the directory sbatch was called from),
# PYTHON (default: $GANPAINT_ROOT/.venv/bin/python), ACCELERATE_CONFIG, GPUS_PER_NODE, MAIN_PORT.
#
# Stop and requeue: SLURM sends SIGUSR1 to this shell alone (--signal=B:USR1@120). The trap
# forwards it to srun, srun to one `launch_plan node` supervisor per node, and each supervisor to
# its training processes only (not to the torchrun agent, not to DataLoader workers). The loop
# finishes its step, checkpoints and exits 0 on every rank; once srun has returned 0, this shell
# requeues the job, which resumes from the checkpoint with the same arguments. A SIGTERM (scancel,
# preemption, the time limit itself) takes the same path, within SLURM's KillWait.
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

# The run directory is known only once the config is read: the #SBATCH --output file keeps the
# first lines, everything after also goes to RUN_DIR/logs (appended across requeues).
run_dir=$("${plan[@]}" run-dir --config "$config" "$@") || exit 2
log_dir=$run_dir/logs
mkdir -p "$log_dir" || exit 2
# tee ignores the stop signals: were it to die, the shell would die of SIGPIPE on its next echo.
exec > >(trap '' USR1 TERM INT; exec tee -a "$log_dir/slurm-$SLURM_JOB_ID-batch.out") 2>&1
echo "=== $(date '+%F %T') job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname)"
"${plan[@]}" plan --config "$config" "$@" || exit 2

stop_requested=0
signals_seen=0
srun_pid=
on_stop() {
    stop_requested=1
    signals_seen=$((signals_seen + 1))
    echo "=== $(date '+%F %T') stop signal: training checkpoints at the end of its step"
    [ -n "$srun_pid" ] && kill -USR1 "$srun_pid" 2>/dev/null
}
trap on_stop USR1 TERM

if [ "$stop_requested" = 1 ]; then  # signalled before training started: nothing to save
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
# Since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch.
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    --open-mode=append --output="$log_dir/slurm-%j-node%n.out" \
    "${plan[@]}" node --config "$config" "$@" &
srun_pid=$!

# A trapped signal interrupts `wait` (status > 128) while srun runs on: wait again.
while :; do
    seen=$signals_seen
    status=0
    wait "$srun_pid" || status=$?
    if [ "$status" -le 128 ] || [ "$signals_seen" = "$seen" ]; then
        break
    fi
done

if [ "$stop_requested" = 1 ] && [ "$status" = 0 ]; then
    echo "=== $(date '+%F %T') checkpoint saved: requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
fi
echo "=== $(date '+%F %T') srun exited with status $status"
exit "$status"
