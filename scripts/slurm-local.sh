#!/usr/bin/env bash
# A real one-node Slurm on this machine, for tsumugi's Slurm tests and benchmark.
#
#   scripts/slurm-local.sh start   # writes /etc/slurm/slurm.conf, starts munged, slurmctld, slurmd; waits for an idle node
#   scripts/slurm-local.sh stop    # stops the three daemons it started
#   scripts/slurm-local.sh status
#
# Needs root and `apt-get install -y slurm-wlm munge` (Debian). Idempotent: `start` on a
# running cluster only checks that the node is idle. No cgroups (containers rarely allow
# them): proctrack/linuxproc and task/none. No accounting database: `sacct` is not
# available, so tsumugi reads exit codes from the file its batch script writes
# (docs/slurm.md). The node advertises two fake GPUs (gres `gpu`, no device files) so
# `--gres=gpu:N` can be submitted and seen in `scontrol show job`; nothing restricts
# what a job can see.
set -euo pipefail

STATE=${TSUMUGI_SLURM_STATE:-/var/tmp/tsumugi-slurm}
CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)

running() { pgrep -x "$1" >/dev/null 2>&1; }

write_conf() {
    mkdir -p "$STATE"/{ctld,spool,log} /etc/slurm /run/munge /var/log/munge /var/lib/munge
    cat >"$CONF.tmp" <<CONF
# Written by tsumugi scripts/slurm-local.sh: one controller and one node on localhost.
ClusterName=tsumugi-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
GresTypes=gpu
ReturnToService=2
MinJobAge=600
KillWait=2
InactiveLimit=0
MaxJobCount=100000
# The node is oversubscribed on purpose: trivial test jobs should not queue behind each other.
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=64 Boards=1 SocketsPerBoard=1 CoresPerSocket=64 ThreadsPerCore=1 RealMemory=16000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
    mv "$CONF.tmp" "$CONF"
    # Fake GPU "devices": plain files; slurmd only needs them to exist.
    touch "$STATE/gpu0" "$STATE/gpu1"
    printf 'AutoDetect=off\nNodeName=%s Name=gpu File=%s/gpu[0-1]\n' "$NODE" "$STATE" >/etc/slurm/gres.conf
}

start() {
    command -v slurmctld >/dev/null || { echo "slurmctld not found: apt-get install -y slurm-wlm munge" >&2; exit 1; }
    write_conf
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
    chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    chmod 0400 /etc/munge/munge.key
    running munged || { munged --force </dev/null >/dev/null 2>&1 || su -s /bin/sh munge -c 'munged --force'; }
    running slurmctld || slurmctld </dev/null >/dev/null 2>&1
    running slurmd || slurmd </dev/null >/dev/null 2>&1
    for _ in $(seq 1 120); do
        st=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
        case "$st" in
            idle*|mix*|alloc*) echo "slurm: node $NODE $st"; return 0 ;;
            down*|drain*) scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    echo "slurm: node $NODE not idle after 60s (state: '${st:-none}'); logs in $STATE/log" >&2
    tail -n 20 "$STATE"/log/*.log >&2 || true
    exit 1
}

stop() {
    for d in slurmd slurmctld; do
        pid=$(cat "$STATE/$d.pid" 2>/dev/null || true)
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    echo "slurm: stopped (munged left running)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) sinfo; squeue ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
