# --- common part (sbatch/_common.sh, inlined by jobs/render_sbatch.py) ---
# A USR1 (sent to this shell 120 s before the time limit, or on preemption) requeues the job; the step
# it runs writes each shard atomically, so a killed task loses only unfinished work. Requeues are
# counted (SLURM_RESTART_COUNT) and stop at MAX_REQUEUES.
set -uo pipefail
export HDF5_USE_FILE_LOCKING=FALSE
JOB="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID:-}}"
JOB="${JOB:-${SLURM_JOB_ID:-local}}"
RESTARTS="${SLURM_RESTART_COUNT:-0}"
echo "vip: job ${JOB} on $(hostname) (SLURMD_NODENAME=${SLURMD_NODENAME:-}), restart ${RESTARTS} of at most ${MAX_REQUEUES}" >&2
if [ "$RESTARTS" -gt "$MAX_REQUEUES" ]; then
  echo "vip: requeued ${RESTARTS} times, more than MAX_REQUEUES=${MAX_REQUEUES}: not running again" >&2
  exit 1
fi
requeue() {  # reason
  if [ "$RESTARTS" -ge "$MAX_REQUEUES" ]; then
    echo "vip: $1, but already requeued ${RESTARTS} times (max ${MAX_REQUEUES}): not requeueing" >&2
    return 1
  fi
  echo "vip: $1: requeueing ${JOB} (restart $((RESTARTS + 1)) of at most ${MAX_REQUEUES})" >&2
  scontrol requeue "$JOB"
}
trap 'requeue "signal USR1"' USR1
run() {  # the step runs in the background so that the USR1 trap fires at once; returns its exit status
  "$@" &
  local child=$! rc=0
  while :; do
    wait "$child" && rc=0 || rc=$?
    kill -0 "$child" 2>/dev/null || break  # still there: wait returned for a trapped signal
  done
  return "$rc"
}
# --- end of common part ---
