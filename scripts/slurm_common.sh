# What scripts/local_slurm.sh and scripts/multinode_slurm.sh share: sourced by both, after they set DIR, DB_PORT,
# DB_PASS and define `log`. Debian's packages: munge, MariaDB, slurmdbd (accounting, needed by sacct and so by
# submitit), slurmctld and slurmd.

install_packages() {  # install_packages [COMMAND:PACKAGE ...]: SLURM's packages and these, where missing
    local missing=() pair
    for pair in slurmctld:slurm-wlm slurmdbd:slurmdbd mariadbd:mariadb-server munged:munge "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2; shift 2
    for _ in $(seq $((limit * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    log "timed out waiting for $what"; return 1
}

scheduling_settings() {  # scheduling_settings DBD_PORT: the slurm.conf lines both clusters share
    cat <<EOC
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
AccountingStoragePort=$1
MinJobAge=300
KillWait=30
EOC
}

write_slurmdbd_conf() {  # write_slurmdbd_conf DBD_PORT
    cat > "$DIR/etc/slurmdbd.conf" <<EOC
AuthType=auth/munge
DbdHost=localhost
DbdPort=$1
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
EOC
    chmod 600 "$DIR/etc/slurmdbd.conf"
}

start_munge() {  # this machine's munged, shared by both clusters: started only if none answers
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

start_mariadb() {  # the accounting database under $DIR, on $DB_PORT
    if [ ! -d "$DIR/mysql/mysql" ]; then
        mysql_install_db --user=root --datadir="$DIR/mysql" >/dev/null
    fi
    mariadbd --user=root --datadir="$DIR/mysql" --socket="$DIR/mysql/mysql.sock" --port=$DB_PORT \
        --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadb.pid" >"$DIR/log/mariadb.log" 2>&1 &
    wait_for 60 mariadb mysqladmin --socket="$DIR/mysql/mysql.sock" ping
    mysql --socket="$DIR/mysql/mysql.sock" -uroot <<EOC
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
FLUSH PRIVILEGES;
EOC
}

stop_pid() {  # stop_pid PIDFILE: TERM, up to 10 s, then KILL
    local pid
    [ -f "$1" ] || return 0
    pid=$(cat "$1")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}
