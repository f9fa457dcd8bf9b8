#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from Debian's packages: munge, MariaDB,
# slurmdbd (accounting, needed by sacct and so by submitit), slurmctld and slurmd.
#
#   scripts/local_slurm.sh start    # install if needed, start everything, wait until the node is idle
#   scripts/local_slurm.sh env      # print `export SLURM_CONF=...` for client commands
#   scripts/local_slurm.sh stop     # stop what start started (by recorded pid), keep nothing running
#
# Everything lives under $DITLAB_SLURM_DIR (default /tmp/ditlab-slurm). Needs root (CI and dev boxes).
set -euo pipefail

DIR=${DITLAB_SLURM_DIR:-/tmp/ditlab-slurm}
CLUSTER=ditlab
HOST=$(hostname)
CONF=$DIR/etc/slurm.conf
DB_PORT=3307
DB_PASS=ditlab-slurm

log() { echo "[local_slurm] $*"; }
# shellcheck source=scripts/slurm_common.sh
source "$(dirname "$0")/slurm_common.sh"

write_configs() {
    mkdir -p "$DIR"/{etc,state,spool,log,run,mysql}
    cat > "$CONF" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
$(scheduling_settings 6819)
MaxArraySize=100001
MaxJobCount=100000
NodeName=$HOST CPUs=$(nproc) RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    write_slurmdbd_conf 6819
}

start() {
    install_packages
    if [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
        log "already running (SLURM_CONF=$CONF)"; return
    fi
    write_configs
    export SLURM_CONF=$CONF
    start_munge
    start_mariadb
    slurmdbd -f "$DIR/etc/slurmdbd.conf" 2>>"$DIR/log/slurmdbd.log" || slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    slurmctld -f "$CONF"
    slurmd -f "$CONF"
    wait_for 60 "the node to be idle" sh -c "sinfo -h -o %t | grep -q idle"
    log "up: $(sinfo -h -o '%P %D %t'); export SLURM_CONF=$CONF"
}

stop() {
    export SLURM_CONF=$CONF
    if [ -f "$CONF" ] && command -v scancel >/dev/null; then
        scancel --user=root >/dev/null 2>&1 || true
    fi
    stop_pid "$DIR/run/slurmd.pid"
    stop_pid "$DIR/run/slurmctld.pid"
    stop_pid "$DIR/run/slurmdbd.pid"
    stop_pid "$DIR/run/mariadb.pid"
    stop_pid "$DIR/run/munged.pid"
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
