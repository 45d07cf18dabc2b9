#!/usr/bin/env bash
# A real two-node Slurm cluster on this machine, for development and tests: munged, slurmctld and two slurmd on
# loopback as nodes n1 and n2 of one partition (uniad). Idempotent; stops by the pids in its pid files.
#
#   bash scripts/slurm_cluster.sh start     # make slurm        (prints the SLURM_CONF to export)
#   bash scripts/slurm_cluster.sh stop      # make slurm-stop
#   bash scripts/slurm_cluster.sh status
#
# Needs Debian's slurm-wlm and munge (apt-get install slurm-wlm munge) and root: both slurmd run on this host, each
# with its own port (NodeAddr=127.0.0.1), ProctrackType=proctrack/linuxproc, TaskPlugin=task/none and no accounting
# daemon. Each node declares UNIAD_SLURM_GPUS GPUs (default 2) as generic resources backed by stand-in character
# devices (mknod c 1 3, what /dev/null is): Slurm hands them out as on a GPU cluster, setting CUDA_VISIBLE_DEVICES for
# the ranks of a job that requests --gres=gpu:N and nothing for one that requests none.
# Settings: UNIAD_SLURM_DIR (default ./.slurm), UNIAD_SLURM_CPUS (CPUs per node, default: this host's),
# UNIAD_SLURM_PORT (slurmctld's port, default 16817; slurmd and the two nodes take the next ones).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${UNIAD_SLURM_DIR:-$PWD/.slurm}
CONF=$DIR/slurm.conf
CPUS=${UNIAD_SLURM_CPUS:-$(nproc)}
MUNGE_PID=/run/munge/munged.pid
PORT=${UNIAD_SLURM_PORT:-16817}
GPUS=${UNIAD_SLURM_GPUS:-2}

need() {
  for tool in slurmctld slurmd munged sinfo; do
    command -v "$tool" > /dev/null || { echo "$tool is missing: apt-get install -y slurm-wlm munge" >&2; exit 1; }
  done
  [ "$(id -u)" = 0 ] || { echo "run as root: two slurmd on one host need it" >&2; exit 1; }
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2> /dev/null; }

write_conf() {
  mkdir -p "$DIR/spool" "$DIR/log" "$DIR/dev"
  # Stand-in GPU device files: n1 gets fakegpu0.., n2 the next ones.
  for i in $(seq 0 $((2 * GPUS - 1))); do
    [ -e "$DIR/dev/fakegpu$i" ] || mknod "$DIR/dev/fakegpu$i" c 1 3
  done
  cat > "$DIR/gres.conf" <<GRES
NodeName=n1 Name=gpu File=$DIR/dev/fakegpu[0-$((GPUS - 1))]
NodeName=n2 Name=gpu File=$DIR/dev/fakegpu[$GPUS-$((2 * GPUS - 1))]
GRES
  cat > "$CONF" <<CONF
ClusterName=uniad
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdTimeout=60
MinJobAge=600
GresTypes=gpu
NodeName=n1 NodeAddr=127.0.0.1 NodeHostname=localhost Port=$((PORT + 2)) CPUs=$CPUS Gres=gpu:$GPUS State=UNKNOWN
NodeName=n2 NodeAddr=127.0.0.1 NodeHostname=localhost Port=$((PORT + 3)) CPUs=$CPUS Gres=gpu:$GPUS State=UNKNOWN
PartitionName=uniad Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

start() {
  need
  write_conf
  export SLURM_CONF=$CONF
  if ! alive "$MUNGE_PID"; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
  fi
  alive "$DIR/slurmctld.pid" || slurmctld
  for node in n1 n2; do
    alive "$DIR/slurmd.$node.pid" || slurmd -N "$node"
  done
  for _ in $(seq 60); do
    if [ "$(sinfo -h -p uniad -o '%D %t' 2> /dev/null)" = "2 idle" ]; then
      echo "==> Slurm cluster up: partition uniad, nodes n1 n2 ($CPUS CPUs and $GPUS stand-in GPUs each)"
      echo "    export SLURM_CONF=$CONF"
      return 0
    fi
    scontrol update nodename=n1,n2 state=resume > /dev/null 2>&1 || true
    sleep 1
  done
  echo "the Slurm cluster did not come up; logs in $DIR/log" >&2
  sinfo >&2 || true
  exit 1
}

stop() {
  # Its jobs first: a job's slurmstepd and srun outlive the daemons that launched them.
  if alive "$DIR/slurmctld.pid"; then
    jobs=$(SLURM_CONF=$CONF squeue --noheader --format=%i 2> /dev/null || true)
    if [ -n "$jobs" ]; then
      # shellcheck disable=SC2086  # one argument per job id
      SLURM_CONF=$CONF scancel $jobs || true
      for _ in $(seq 30); do
        [ -z "$(SLURM_CONF=$CONF squeue --noheader --format=%i 2> /dev/null)" ] && break
        sleep 0.5
      done
    fi
  fi
  for pidfile in "$DIR"/slurmd.*.pid "$DIR/slurmctld.pid"; do
    [ -f "$pidfile" ] || continue
    if alive "$pidfile"; then
      pid=$(cat "$pidfile")
      kill -TERM "$pid"
      for _ in $(seq 30); do kill -0 "$pid" 2> /dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2> /dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
  done
  # munged serves every cluster on this host: it goes with the last one.
  if alive "$MUNGE_PID" && ! pgrep -x slurmctld > /dev/null; then
    kill -TERM "$(cat "$MUNGE_PID")"
  fi
  echo "==> Slurm cluster stopped"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF=$CONF sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
