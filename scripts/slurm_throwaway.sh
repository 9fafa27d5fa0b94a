#!/usr/bin/env bash
# A throwaway single-node SLURM cluster, for the tests that submit searches with sbatch (#19).
#
#   eval "$(bash scripts/slurm_throwaway.sh start DIR)"   # prints: export SLURM_CONF=DIR/etc/slurm.conf
#   sbatch --array=0-3 ... ; squeue ; sinfo ; scancel ...
#   bash scripts/slurm_throwaway.sh stop DIR
#
# Needs root (slurmd runs jobs as their users; SlurmUser=root). Installs Debian's slurm-wlm and
# munge with apt-get when slurmctld or munged is missing (Debian 12: SLURM 22.05).
#
# What it starts, all of it under DIR (state, spool, logs, pid files, the munge key and socket,
# the configuration), so that `stop` removes every trace by removing DIR:
#   * munged, as root, with its own key (DIR/munge/munge.key, mode 400) and socket;
#   * slurmctld and slurmd, as root, on this host (`hostname -s`, address 127.0.0.1), the ports
#     SLURM_THROWAWAY_PORT and the next one (default 6817, 6818), reading DIR/etc/slurm.conf:
#     ProctrackType=proctrack/linuxproc and TaskPlugin=task/none (no cgroups: runs in a
#     container), SelectType=select/cons_tres + CR_Core, the node's CPUs and RealMemory, four
#     fake GPUs as gres (Gres=gpu:4; gres.conf File=DIR/dev/fakegpu[0-3], character devices made
#     with `mknod c 1 3`, /dev/null's numbers), so that `sbatch --gres=gpu:2` sets
#     CUDA_VISIBLE_DEVICES as on a GPU cluster (0,1 and 2,3 for two jobs), and one partition
#     `debug` with OverSubscribe=FORCE:4 (four jobs per core: a 2-core machine runs a 4-task
#     array at once).
# A requeued job may start again 10 s after it was requeued (cred_expire=10; SLURM's default is
# 120 s). Accounting is off (no slurmdbd, no sacct): a job that must report its exit status writes it to
# a file. `start` returns once sinfo shows the node idle (at most 90 s), else prints the logs and
# fails (everything started is stopped again). `stop` cancels every job, waits for them to end
# (at most 60 s), stops the daemons by their pid files and removes DIR.
set -euo pipefail
cmd=${1:?start|stop}; dir=${2:?directory}
port=${SLURM_THROWAWAY_PORT:-6817}

stop_pidfile() {  # stop_pidfile FILE: TERM the daemon it names, wait up to 20 s, then KILL it
  local pid
  [[ -s $1 ]] || return 0
  pid=$(<"$1")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

stop_all() {
  if [[ -f $dir/etc/slurm.conf ]] && [[ -s $dir/run/slurmctld.pid ]]; then
    export SLURM_CONF=$dir/etc/slurm.conf
    scancel --full --quiet --partition=debug 2>/dev/null || true
    for _ in $(seq 120); do
      [[ -z "$(squeue -h -o %i 2>/dev/null)" ]] && break
      sleep 0.5
    done
  fi
  stop_pidfile "$dir/run/slurmd.pid"
  stop_pidfile "$dir/run/slurmctld.pid"
  stop_pidfile "$dir/run/munged.pid"
  rm -rf "$dir"
}

case "$cmd" in
  start)
    [[ $(id -u) == 0 ]] || { echo "slurm_throwaway: must run as root (slurmd runs jobs as their users)" >&2; exit 1; }
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
      echo "installing slurm-wlm and munge (apt-get)" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >&2 || {
        apt-get update -q >&2 &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >&2; }
    fi
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    trap 'echo "slurm_throwaway: start failed; logs:" >&2; tail -n 20 "$dir"/log/* >&2 2>/dev/null || true; stop_all' ERR
    mkdir -p "$dir"/{etc,munge,run,log,state,spool,dev}
    chmod 700 "$dir/munge"

    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$dir/munge/munge.key"
    munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket" \
      --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/munged.seed"

    for i in 0 1 2 3; do
      mknod "$dir/dev/fakegpu$i" c 1 3 2>/dev/null || : >"$dir/dev/fakegpu$i"
    done
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 - 512 ))
    cat >"$dir/etc/slurm.conf" <<EOF
# Written by scripts/slurm_throwaway.sh: a throwaway single-node cluster under $dir.
ClusterName=throwaway
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=$((port + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket,cred_expire=10
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
KillWait=30
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    echo "Name=gpu File=$dir/dev/fakegpu[0-3]" >"$dir/etc/gres.conf"
    export SLURM_CONF=$dir/etc/slurm.conf
    slurmctld -c
    slurmd
    for _ in $(seq 180); do
      state=$(sinfo -h -N -o %t 2>/dev/null || true)
      [[ $state == idle ]] && break
      sleep 0.5
    done
    if [[ $state != idle ]]; then
      echo "slurm_throwaway: the node is not idle after 90 s (sinfo: '${state}')" >&2
      false
    fi
    trap - ERR
    echo "export SLURM_CONF=$SLURM_CONF"
    ;;
  stop)
    [[ -d $dir ]] || exit 0
    dir=$(cd "$dir" && pwd)
    stop_all
    ;;
  *) echo "usage: $0 start|stop DIR" >&2; exit 2 ;;
esac
