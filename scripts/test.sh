#!/usr/bin/env bash
# The full test suite, as CI runs it (.ci/run starts the local Slurm cluster first), in two streams:
#   - the `slurm` tests, one after another: they share one cluster whose nodes each expects to itself,
#     and they mostly wait on the scheduler;
#   - everything else beside them on 2 pytest-xdist workers (-n 2, worksteal: an idle worker takes queued
#     tests from the busy one, so the slow tail is shared), one torch thread each, at a lower priority (nice):
#     the cluster's jobs run against scheduler timeouts, the rest only against their own generous ones.
# (pytest-xdist's --dist loadgroup would keep the slurm tests on one worker, but with pytest 9 it silently
# does not group: xdist renames item._nodeid, which pytest 9 no longer reads.)
# Arguments go to both streams, e.g. `bash scripts/test.sh tests/integration/test_slurm_loo.py -x`.
# Exit 0 only if both pass; a stream that selects no test counts as passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
tmp=$(mktemp -d -t vip-tests.XXXXXX)
start=$(date +%s)

OMP_NUM_THREADS=1 "$PY" -m pytest -q -m slurm --basetemp "$tmp/slurm" "$@" > "$tmp/slurm.log" 2>&1 &
slurm_pid=$!
nice -n 10 "$PY" -m pytest -q -n 2 --dist worksteal -m "not slurm" --basetemp "$tmp/rest" "$@"
rest=$?
wait "$slurm_pid"
slurm=$?

echo
echo "=== the slurm tests ($tmp/slurm.log) ==="
cat "$tmp/slurm.log"
[ "$rest" -eq 5 ] && rest=0    # no test selected
[ "$slurm" -eq 5 ] && slurm=0
echo "=== $(( $(date +%s) - start )) s; not-slurm exit $rest, slurm exit $slurm ==="
[ "$rest" -eq 0 ] && [ "$slurm" -eq 0 ]
