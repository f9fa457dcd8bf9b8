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

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    log "installing slurm-wlm munge slurmdbd mariadb-server"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge slurmdbd mariadb-server >/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "timed out waiting for $what"; return 1
}

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
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
MaxArraySize=100001
MaxJobCount=100000
MinJobAge=300
KillWait=30
NodeName=$HOST CPUs=$(nproc) RealMemory=20000 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    cat > "$DIR/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
EOF
    chmod 600 "$DIR/etc/slurmdbd.conf"
}

start_munge() {
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chmod 400 /etc/munge/munge.key
    if ! (munge -n | unmunge) >/dev/null 2>&1; then
        munged --force --pid-file="$DIR/run/munged.pid"
        wait_for 10 munge sh -c 'munge -n | unmunge'
    fi
}

start_mariadb() {
    if [ ! -d "$DIR/mysql/mysql" ]; then
        mysql_install_db --user=root --datadir="$DIR/mysql" >/dev/null
    fi
    mariadbd --user=root --datadir="$DIR/mysql" --socket="$DIR/mysql/mysql.sock" --port=$DB_PORT \
        --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadb.pid" >"$DIR/log/mariadb.log" 2>&1 &
    wait_for 30 mariadb mysqladmin --socket="$DIR/mysql/mysql.sock" ping
    mysql --socket="$DIR/mysql/mysql.sock" -uroot <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOF
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

stop_pid() {  # stop_pid NAME PIDFILE
    local pid
    [ -f "$2" ] || return 0
    pid=$(cat "$2")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$2"
}

stop() {
    export SLURM_CONF=$CONF
    if [ -f "$CONF" ] && command -v scancel >/dev/null; then
        scancel --user=root >/dev/null 2>&1 || true
    fi
    stop_pid slurmd "$DIR/run/slurmd.pid"
    stop_pid slurmctld "$DIR/run/slurmctld.pid"
    stop_pid slurmdbd "$DIR/run/slurmdbd.pid"
    stop_pid mariadb "$DIR/run/mariadb.pid"
    stop_pid munged "$DIR/run/munged.pid"
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
