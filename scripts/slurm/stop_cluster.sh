#!/usr/bin/env bash
# Stops the daemons of scripts/slurm/start_cluster.sh (by their pid files): slurmd nodes, slurmctld,
# slurmdbd, then mariadb and munge. --slurm-only keeps munge and mariadb running. Idempotent.
set -uo pipefail
[ "$(id -u)" = 0 ] || { echo "stop_cluster.sh: must run as root" >&2; exit 1; }
STATE_DIR=${VIP_SLURM_STATE:-/var/lib/vip-slurm}

stop_pid() {  # pidfile: TERM, wait up to 10 s, then KILL
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
}
for f in "$STATE_DIR"/slurmd-*.pid; do [ -e "$f" ] && stop_pid "$f"; done
stop_pid "$STATE_DIR/slurmctld.pid"
stop_pid "$STATE_DIR/slurmdbd.pid"
if [ "${1:-}" != "--slurm-only" ]; then
  command -v mysqladmin >/dev/null && mysqladmin --silent ping >/dev/null 2>&1 && mysqladmin shutdown
  [ -s /run/munge/munged.pid ] && stop_pid /run/munge/munged.pid
fi
echo "slurm: cluster vip stopped"
