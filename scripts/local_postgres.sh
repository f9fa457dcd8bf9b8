#!/usr/bin/env bash
# A real PostgreSQL server on this machine, from Debian's packages (`postgresql`): the tracking store a
# cluster's MLflow server should keep its runs in, for the tests and benchmarks that run sweeps on it.
#
#   scripts/local_postgres.sh start   # install if needed, create the cluster once, start it, wait until it answers
#   scripts/local_postgres.sh env     # print the exports its clients need: DITLAB_POSTGRES_URI and PGPASSFILE
#   scripts/local_postgres.sh stop    # stop what start started (the data stays for the next start)
#
# Everything lives under $DITLAB_POSTGRES_DIR (default /tmp/ditlab-postgres); the server listens on
# 127.0.0.1:$DITLAB_POSTGRES_PORT (default 5433) only. The role `ditlab` may create databases (each test makes
# its own) and logs in with a random password kept in a pgpass file only its owner reads (libpq's PGPASSFILE):
# the URI carries none, since a sweep file naming it is logged to MLflow. Needs root (the server runs as the
# `postgres` user) or a user who may run initdb.
set -euo pipefail

DIR=${DITLAB_POSTGRES_DIR:-/tmp/ditlab-postgres}
PORT=${DITLAB_POSTGRES_PORT:-5433}
ROLE=ditlab

log() { echo "[local_postgres] $*"; }

bindir() { find /usr/lib/postgresql -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -1; }

as_owner() {  # the server's commands run as `postgres` when this script runs as root (initdb refuses root)
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_packages() {
    [ -n "$(bindir)" ] && return 0
    log "installing postgresql"
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
        postgresql >/dev/null
}

running() { [ -n "$(bindir)" ] && as_owner "$(bindir)/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; }

start() {
    install_packages
    local bin password
    bin=$(bindir)
    if running; then
        log "already running on 127.0.0.1:$PORT"; return
    fi
    mkdir -p "$DIR"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$DIR"; fi
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
        as_owner "$bin/initdb" -D "$DIR/data" --auth-local=peer --auth-host=scram-sha-256 -E UTF8 >/dev/null
    fi
    # -N: MLflow servers keep a pool each, and the load benchmark runs 64+ clients at once
    as_owner "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 \
        -o "-p $PORT -k $DIR -h 127.0.0.1 -N 500" start >/dev/null
    if [ ! -s "$DIR/pgpass" ]; then
        (umask 077; printf '127.0.0.1:%s:*:%s:%s\n' "$PORT" "$ROLE" "$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
            > "$DIR/pgpass")
    fi
    chmod 600 "$DIR/pgpass"
    password=$(cut -d: -f5 "$DIR/pgpass")
    # the password goes through psql's standard input, never a command line
    as_owner "$bin/psql" -q -h "$DIR" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 >/dev/null <<EOF
SELECT 'CREATE ROLE $ROLE' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE')\gexec
ALTER ROLE $ROLE WITH LOGIN CREATEDB PASSWORD '$password';
SELECT 'CREATE DATABASE $ROLE OWNER $ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$ROLE')\gexec
EOF
    log "up: postgresql://$ROLE@127.0.0.1:$PORT/$ROLE (password in $DIR/pgpass); eval \"\$($0 env)\""
}

stop() {
    if running; then
        as_owner "$(bindir)/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
    fi
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export PGPASSFILE=$DIR/pgpass DITLAB_POSTGRES_URI=postgresql://$ROLE@127.0.0.1:$PORT/$ROLE" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
