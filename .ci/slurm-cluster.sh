#!/usr/bin/env bash
# A one-node Slurm cluster from Debian's packages (slurmctld + slurmd + munge), for testing
# `maskcheck ... --launcher slurm` on one machine (tests/test_slurm_cluster.py uses it).
#
#   .ci/slurm-cluster.sh up      install the packages if missing, write a minimal config, start the
#                                daemons, wait until the node is idle (prints the seconds it took)
#   .ci/slurm-cluster.sh down    stop the daemons this script started (by their pid files)
#
# Needs root (apt-get, and slurmd runs jobs as any user) on Debian/Ubuntu. No systemd: the daemons
# run in the background with their state under $SLURM_TEST_ROOT (default /tmp/maskcheck-slurm).
# Accounting is off (no slurmdbd): sacct says nothing, squeue is what maskcheck asks.
# Exit 0 when the cluster is up; otherwise exit 1 with one line saying why.
set -euo pipefail

ROOT=${SLURM_TEST_ROOT:-/tmp/maskcheck-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by maskcheck's .ci/slurm-cluster.sh"
die() { echo "slurm-cluster: $*" >&2; exit 1; }

down() {
  for name in slurmd slurmctld munge/munged; do
    pidfile="$ROOT/$name.pid"
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$pidfile"
    fi
  done
}

up() {
  local start=$SECONDS
  [ "$(id -u)" = 0 ] || die "needs root (apt-get install, slurmd); run as root or in a container"
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
     || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || die "no apt-get: install slurmctld, slurmd, slurm-client and munge yourself"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge \
      >/dev/null) || die "apt-get install slurmctld slurmd slurm-client munge failed (no package mirror reachable?)"
  fi
  # never take over a real Slurm installation: only a config this script wrote is rewritten
  if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; not touching a real Slurm setup"
  fi
  down  # a previous run's daemons
  if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    die "slurmctld/slurmd already run here (not started by this script); stop them or use that cluster"
  fi
  mkdir -p "$ROOT"/{spool-ctld,spool-d,log,munge} /etc/munge /run/munge /var/log/munge /var/lib/munge
  # munge: a key shared by the controller and the node (both here)
  if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --force >/dev/null 2>&1 || true; fi
    [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge "$ROOT/munge" 2>/dev/null || true
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- munged --pid-file="$ROOT/munge/munged.pid" 2>/dev/null \
      || munged --force --pid-file="$ROOT/munge/munged.pid" || die "munged did not start"
  else
    munged --force --pid-file="$ROOT/munge/munged.pid" || die "munged did not start"
  fi
  # the node as slurmd sees it (CPUs, sockets, memory): one line "NodeName=... CPUs=... RealMemory=..."
  local host node
  host=$(hostname -s)
  node=$(slurmd -C | head -1) || die "slurmd -C failed"
  mkdir -p /etc/slurm
  cat > "$CONF" <<EOF
$MARKER: a one-node test cluster, no accounting, no cgroups
ClusterName=maskcheck
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$ROOT/spool-ctld
SlurmdSpoolDir=$ROOT/spool-d
SlurmctldPidFile=$ROOT/slurmctld.pid
SlurmdPidFile=$ROOT/slurmd.pid
SlurmctldLogFile=$ROOT/log/slurmctld.log
SlurmdLogFile=$ROOT/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
# scancel sends SIGTERM, which submitit's jobs ignore (a requeue signal follows on preemption), then
# SIGKILL after KillWait (Slurm's default 30 s); 2 s here so a cancelled test job stops at once
KillWait=2
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
  slurmctld || die "slurmctld did not start (see $ROOT/log/slurmctld.log)"
  slurmd || die "slurmd did not start (see $ROOT/log/slurmd.log)"
  for _ in $(seq 120); do
    if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed)'; then
      echo "slurm-cluster: up in $((SECONDS - start)) s ($(sinfo -h -o '%D node(s), %c CPUs, partition %P'))"
      return 0
    fi
    sleep 0.5
  done
  die "the node did not become idle within 60 s: $(sinfo -h -o '%T %E' 2>&1 | head -1)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
