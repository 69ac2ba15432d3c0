#!/usr/bin/env bash
# A one-node SLURM on this machine, for the tests and CI (tests/slurm/test_slurm.py):
#
#   scripts/slurm/local_cluster.sh start    # install slurm-wlm and munge where missing, start the daemons
#   scripts/slurm/local_cluster.sh status   # SLURM_CONF=..., then each daemon and the node's state
#   scripts/slurm/local_cluster.sh stop     # cancel its jobs, stop the daemons: nothing left running
#
# Everything lives in $LDM_SLURM_DIR (default /tmp/ldm-slurm): slurm.conf, its own munge key and
# socket, state, spool, pid and log files. Nothing under /etc is written and an existing SLURM or
# munged on the machine is left alone (other ports, another socket). Clients find this cluster
# through SLURM_CONF=$LDM_SLURM_DIR/slurm.conf. The node is this machine (its host name, CPU count
# and memory) at 127.0.0.1, in one default partition "local"; no cgroups, no accounting. Needs root
# (SlurmUser=root) and, for the install, apt-get (Debian/Ubuntu). Errors are one line on stderr.
set -euo pipefail

DIR="${LDM_SLURM_DIR:-/tmp/ldm-slurm}"
PORT="${LDM_SLURM_PORT:-16817}"  # slurmctld; slurmd listens on the next port
CONF="$DIR/slurm.conf"
SOCKET="$DIR/munge/munge.socket"
NODE="$(hostname -s)"
NAME="local_cluster.sh"

fail() {
    echo "$NAME: $*" >&2
    exit 1
}

pid_of() {  # the pid of one of our daemons (munged, slurmctld, slurmd) if it is running
    local pid
    pid="$(cat "$DIR/$1.pid" 2>/dev/null)" || return 1
    # The process of that pid file, not another that reused its number.
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}

install_packages() {
    local missing=0 tool
    for tool in munged mungekey slurmctld slurmd sbatch srun scontrol sinfo squeue scancel; do
        command -v "$tool" >/dev/null || missing=1
    done
    [ "$missing" = 0 ] && return 0
    [ "$(id -u)" = 0 ] || fail "slurm-wlm and munge are not installed, and installing them needs root"
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed, and there is no apt-get"
    mkdir -p "$DIR" 2>/dev/null || fail "cannot create $DIR (set LDM_SLURM_DIR to a writable directory)"
    {
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
    } >"$DIR/apt.log" 2>&1 || fail "apt-get could not install slurm-wlm and munge (see $DIR/apt.log)"
}

write_config() {
    local cpus memory
    cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # nproc obeys both
    memory="$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)"
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge" 2>/dev/null && chmod 700 "$DIR" "$DIR/munge" \
        || fail "cannot create $DIR (set LDM_SLURM_DIR to a writable directory)"
    cat >"$CONF" <<EOF
# Written by scripts/slurm/local_cluster.sh: one node, this machine, on loopback.
ClusterName=ldm-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
SlurmctldTimeout=10
SlurmdTimeout=30
MessageTimeout=5
BatchStartTimeout=10
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munged() {
    pid_of munged >/dev/null && return 0
    [ -s "$DIR/munge/munge.key" ] || {
        mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null 2>&1 \
            || fail "mungekey could not create $DIR/munge/munge.key"
    }
    chmod 400 "$DIR/munge/munge.key"
    munged --force --key-file="$DIR/munge/munge.key" --socket="$SOCKET" --pid-file="$DIR/munged.pid" \
        --log-file="$DIR/munged.log" --seed-file="$DIR/munge/munge.seed" >>"$DIR/munged.log" 2>&1 \
        || fail "munged did not start (see $DIR/munged.log)"
}

start_daemon() {  # slurmctld or slurmd, unless it is running
    pid_of "$1" >/dev/null && return 0
    local flags=()
    [ "$1" = slurmctld ] && flags=(-c)  # a clean start: no jobs left over from an earlier cluster
    "$1" -f "$CONF" "${flags[@]}" >>"$DIR/$1.log" 2>&1 || fail "$1 did not start (see $DIR/$1.log)"
    wait_for 20 pid_of "$1" || fail "$1 exited after starting (see $DIR/$1.log)"
}

node_state() {
    SLURM_CONF="$CONF" sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n 1
}

wait_for() {  # wait_for SECONDS COMMAND...: until COMMAND succeeds (status 1 when time runs out)
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

node_idle() { [ "$(node_state)" = idle ]; }
no_jobs() { [ -z "$(SLURM_CONF="$CONF" squeue --noheader --format=%i 2>/dev/null)" ]; }

start() {
    install_packages
    [ "$(id -u)" = 0 ] || fail "needs root (the daemons run as SlurmUser=root)"
    write_config
    trap 'code=$?; [ "$code" = 0 ] || stop >/dev/null 2>&1; exit "$code"' EXIT  # a failed start leaves nothing running
    start_munged
    wait_for 10 test -S "$SOCKET" || fail "munged did not open $SOCKET (see $DIR/munged.log)"
    start_daemon slurmctld
    start_daemon slurmd
    wait_for 60 node_idle \
        || fail "node $NODE is '$(node_state)', not idle, after 60 s (see $DIR/slurmctld.log, $DIR/slurmd.log)"
    trap - EXIT
}

stop_daemon() {
    local pid
    pid="$(pid_of "$1")" || { rm -f "$DIR/$1.pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    wait_for 15 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
    wait_for 5 bash -c "! kill -0 $pid" || fail "$1 (pid $pid) did not stop"
    rm -f "$DIR/$1.pid"
}

stop() {
    if pid_of slurmctld >/dev/null; then  # the jobs' processes (slurmstepd, tasks) end with them
        SLURM_CONF="$CONF" scancel --quiet --partition=local >/dev/null 2>&1 || true
        wait_for 30 no_jobs || true
    fi
    stop_daemon slurmd
    stop_daemon slurmctld
    stop_daemon munged
}

status() {
    local daemon pid running=0
    echo "SLURM_CONF=$CONF"
    for daemon in munged slurmctld slurmd; do
        if pid="$(pid_of "$daemon")"; then
            echo "$daemon: running (pid $pid)"
        else
            echo "$daemon: stopped"
            running=1
        fi
    done
    [ "$running" = 0 ] && echo "node $NODE: $(node_state)"
    return "$running"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) fail "usage: $0 start|stop|status" ;;
esac
