#!/usr/bin/env bash
# A real Slurm cluster on this one machine, for CI and development (Debian 12, root):
# munge, mariadb + slurmdbd (accounting: sacct works), slurmctld and N slurmd "nodes" n1..nN on localhost
# with fake GPUs. Idempotent: a second call with a running cluster only checks it and prints its status.
#
#   bash scripts/slurm/start_cluster.sh        # install (if needed), configure, start, wait until idle
#   bash scripts/slurm/stop_cluster.sh         # stop every daemon this script started
#
# Knobs (environment): VIP_SLURM_NODES=3 VIP_SLURM_CPUS=4 VIP_SLURM_GPUS=2 VIP_SLURM_MEM_MB=4000
#   VIP_SLURM_MAX_ARRAY_SIZE=5 (small on purpose: larger arrays must be split by the executor)
#   VIP_SLURM_STATE=/var/lib/vip-slurm VIP_SLURM_LOGS=/var/log/vip-slurm VIP_SLURM_TIMEOUT=90 (seconds to wait)
# Partitions: gpu (default) and cpu, both over all nodes, LLN=YES so array tasks spread over nodes.
set -euo pipefail

die() { echo "start_cluster.sh: $*" >&2; exit 1; }
T0=$(date +%s.%N)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts system daemons); try: sudo bash $0"

NODES=${VIP_SLURM_NODES:-3}
CPUS=${VIP_SLURM_CPUS:-4}
GPUS=${VIP_SLURM_GPUS:-2}
MEM_MB=${VIP_SLURM_MEM_MB:-4000}
MAX_ARRAY_SIZE=${VIP_SLURM_MAX_ARRAY_SIZE:-5}
STATE_DIR=${VIP_SLURM_STATE:-/var/lib/vip-slurm}
LOG_DIR=${VIP_SLURM_LOGS:-/var/log/vip-slurm}
TIMEOUT=${VIP_SLURM_TIMEOUT:-90}
CONF_DIR=/etc/slurm
CTLD_PORT=6817
DBD_PORT=6819
[[ "$NODES" =~ ^[1-9]$ ]] || die "VIP_SLURM_NODES must be 1 to 9, got '$NODES'"
[[ "$GPUS" =~ ^[1-8]$ ]] || die "VIP_SLURM_GPUS must be 1 to 8, got '$GPUS'"
[[ "$CPUS$MEM_MB$MAX_ARRAY_SIZE" =~ ^[0-9]+$ ]] || die "VIP_SLURM_CPUS, _MEM_MB and _MAX_ARRAY_SIZE must be numbers"

# ---------------------------------------------------------------- packages
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get to install them: install Slurm 22.05 + munge + slurmdbd + mariadb by hand"
  # Keep package scripts from starting the daemons themselves: this script starts them with its own config.
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  echo "start_cluster.sh: installing ${missing[*]} ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"/tmp/vip-slurm-apt.log" 2>&1 \
    || { [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -5 /tmp/vip-slurm-apt.log >&2; die "apt-get install failed (log: /tmp/vip-slurm-apt.log)"; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
T_PKG=$(date +%s.%N)

# ---------------------------------------------------------------- configuration
mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$STATE_DIR/dev" "$LOG_DIR"
for ((g = 0; g < GPUS; g++)); do
  [ -c "$STATE_DIR/dev/nvidia$g" ] || mknod "$STATE_DIR/dev/nvidia$g" c 1 3
done
if [ ! -s "$STATE_DIR/db.pass" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$STATE_DIR/db.pass")
fi
DB_PASS=$(cat "$STATE_DIR/db.pass")

render() {  # template -> stdout with every @KEY@ filled
  sed -e "s|@NODES@|$NODES|g" -e "s|@PORT_LAST@|$((17000 + NODES))|g" -e "s|@CPUS@|$CPUS|g" \
      -e "s|@GPUS@|$GPUS|g" -e "s|@GPU_LAST@|$((GPUS - 1))|g" -e "s|@MEM_MB@|$MEM_MB|g" \
      -e "s|@MAX_ARRAY_SIZE@|$MAX_ARRAY_SIZE|g" -e "s|@STATE_DIR@|$STATE_DIR|g" -e "s|@LOG_DIR@|$LOG_DIR|g" \
      -e "s|@CONF_DIR@|$CONF_DIR|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" \
      -e "s|@DB_PASS@|$DB_PASS|g" "$1"
}
changed=0
install_conf() {  # name mode: write $CONF_DIR/name from the template if its content differs
  local new; new=$(render "$HERE/$1.in")
  if [ ! -f "$CONF_DIR/$1" ] || [ "$new" != "$(cat "$CONF_DIR/$1")" ]; then
    printf '%s\n' "$new" > "$CONF_DIR/$1.tmp" && chmod "$2" "$CONF_DIR/$1.tmp" && mv "$CONF_DIR/$1.tmp" "$CONF_DIR/$1"
    changed=1
  fi
}
install_conf slurm.conf 644
install_conf gres.conf 644
install_conf cgroup.conf 644
install_conf slurmdbd.conf 600

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # seconds description command...
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${limit}s waiting for $what (logs: $LOG_DIR)"
    sleep 0.2
  done
}
if [ $changed = 1 ] && alive "$STATE_DIR/slurmctld.pid"; then
  echo "start_cluster.sh: configuration changed; restarting the Slurm daemons" >&2
  bash "$HERE/stop_cluster.sh" --slurm-only >/dev/null
fi

# ---------------------------------------------------------------- munge
if ! pgrep -x munged >/dev/null; then
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force >/dev/null
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge && chown munge:munge /run/munge /var/log/munge /var/lib/munge
  su -s /bin/sh munge -c /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
fi
wait_for 15 "munge" sh -c 'munge -n | unmunge'

# ---------------------------------------------------------------- mariadb + slurmdbd (accounting)
if ! mysqladmin --silent ping >/dev/null 2>&1; then
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$LOG_DIR/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed (log: $LOG_DIR/mariadb-install.log)"
  fi
  setsid -f mysqld_safe --user=mysql --bind-address=127.0.0.1 >"$LOG_DIR/mysqld_safe.log" 2>&1 </dev/null
fi
wait_for 60 "mariadb" mysqladmin --silent ping
mysql -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON vip_slurm_acct_db.* TO 'slurm'@'localhost';
SQL
if ! alive "$STATE_DIR/slurmdbd.pid"; then
  slurmdbd || die "slurmdbd did not start (log: $LOG_DIR/slurmdbd.log)"
fi
wait_for 30 "slurmdbd" sacctmgr -n -i show cluster

# ---------------------------------------------------------------- slurmctld + slurmd nodes
if ! alive "$STATE_DIR/slurmctld.pid"; then
  slurmctld || die "slurmctld did not start (log: $LOG_DIR/slurmctld.log)"
fi
wait_for 30 "slurmctld" scontrol ping
for ((i = 1; i <= NODES; i++)); do
  if ! alive "$STATE_DIR/slurmd-n$i.pid"; then
    slurmd -N "n$i" || die "slurmd -N n$i did not start (log: $LOG_DIR/slurmd-n$i.log)"
  fi
done

all_idle() {  # every node idle (or mixed/allocated: busy with jobs of an earlier session) and none down
  local states; states=$(sinfo -h -N -p gpu -o '%t' 2>/dev/null) || return 1
  [ "$(wc -l <<<"$states")" -eq "$NODES" ] || return 1
  ! grep -qvE '^(idle|mix|alloc)$' <<<"$states"
}
end=$((SECONDS + TIMEOUT))
until all_idle; do
  if [ $SECONDS -ge $end ]; then
    sinfo -N >&2 || true
    die "nodes not idle after ${TIMEOUT}s (logs: $LOG_DIR)"
  fi
  # a node left down/drained by an earlier run comes back here
  for n in $(sinfo -h -N -p gpu -t down,drain,fail -o '%N' 2>/dev/null); do scontrol update nodename="$n" state=resume 2>/dev/null || true; done
  sleep 0.3
done
# accounting answers (the controller registered the cluster with slurmdbd)
wait_for 30 "sacct" sacct -n -X -S now
wait_for 30 "cluster registration" sh -c 'sacctmgr -n -P show cluster format=cluster | grep -qx vip'

T1=$(date +%s.%N)
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
echo "slurm: cluster vip up: $NODES nodes idle ($(sinfo -h -p gpu -o %N)), partitions $(sinfo -h -o %P | paste -sd' ')" \
  "with $GPUS fake GPUs and $CPUS CPUs per node, MaxArraySize=$MAX_ARRAY_SIZE, sacct ok;" \
  "$(secs "$T0" "$T1")s ($(secs "$T0" "$T_PKG")s installing packages)"
