#!/usr/bin/env bash
# A real multi-node SLURM cluster on this one machine: a controller and 2 compute nodes, each compute node
# a slurmd in a network namespace of its own (`ip netns`, iproute2) with its own address on a private
# bridge, and a UTS namespace of its own with its own hostname (dlnode1, dlnode2). Jobs that span both
# nodes talk to each other over that network (torch.distributed rendezvous, gloo), as on a cluster; the
# file system is shared, as a cluster's NFS is.
#
#   scripts/multinode_slurm.sh start    # install if needed, start everything, wait until both nodes are idle
#   scripts/multinode_slurm.sh env      # print the exports for client commands (SLURM_CONF, head address)
#   scripts/multinode_slurm.sh stop     # stop what start started (by recorded pid), remove the namespaces
#
# Independent of scripts/local_slurm.sh (which may run beside it): its own directory
# ($DITLAB_MULTINODE_DIR, default /tmp/ditlab-slurm-multinode), MariaDB on port 3308, slurmdbd 6919,
# slurmctld 6917, slurmd 6918 (in the namespaces), the subnet $DITLAB_MULTINODE_SUBNET.0/24 (default
# 10.14.0: the head -- controller and submit host -- is .1, node i is .1i). The machine's munged
# (/etc/munge/munge.key) is shared with local_slurm.sh: SLURM 22.05's clients ignore `AuthInfo=socket=`
# on their connections to slurmdbd, so a second munged with its own key cannot serve accounting; a munged
# this script had to start (none answered) is stopped by its `stop`. Needs root, util-linux's unshare and
# network namespaces.
set -euo pipefail

DIR=${DITLAB_MULTINODE_DIR:-/tmp/ditlab-slurm-multinode}
SUBNET=${DITLAB_MULTINODE_SUBNET:-10.14.0}
CLUSTER=ditlabmn
CONF=$DIR/etc/slurm.conf
HEAD=$SUBNET.1
BRIDGE=dlmnbr0
NODES=(dlnode1 dlnode2)
CTLD_PORT=6917
SLURMD_PORT=6918
DBD_PORT=6919
DB_PORT=3308
DB_PASS=ditlab-multinode

log() { echo "[multinode_slurm] $*"; }
die() { echo "[multinode_slurm] error: $*" >&2; exit 1; }
# shellcheck source=scripts/slurm_common.sh
source "$(dirname "$0")/slurm_common.sh"

namespace() { echo "ditlab-mn-$1"; }
address() { echo "$SUBNET.1${1#dlnode}"; }

check_prerequisites() {
    [ "$(id -u)" = 0 ] || die "needs root (network namespaces, slurmd)"
    ip netns add ditlab-mn-probe 2>/dev/null || die "cannot create network namespaces (ip netns add)"
    nsenter --net=/run/netns/ditlab-mn-probe unshare --uts --mount true 2>/dev/null \
        || { ip netns del ditlab-mn-probe; die "cannot create UTS and mount namespaces (unshare --uts --mount)"; }
    ip netns del ditlab-mn-probe
}

write_configs() {
    mkdir -p "$DIR"/{etc,state,spool,log,run,mysql}
    chmod 755 "$DIR" "$DIR/spool"
    cat > "$CONF" <<EOF
ClusterName=$CLUSTER
SlurmctldHost=dlctl($HEAD)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
$(scheduling_settings $DBD_PORT)
EOF
    for node in "${NODES[@]}"; do
        echo "NodeName=$node NodeAddr=$(address "$node") CPUs=$(nproc) RealMemory=4000 State=UNKNOWN" >> "$CONF"
    done
    echo "PartitionName=multinode Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP" >> "$CONF"
    write_slurmdbd_conf $DBD_PORT
}

hosts_file() {  # what every node resolves: the head (controller, submit host, under its own name too), the nodes
    echo "127.0.0.1 localhost"
    echo "$HEAD dlctl $(hostname)"
    for node in "${NODES[@]}"; do echo "$(address "$node") $node"; done
}

start_network() {  # a bridge on the host (the head's address) and one namespace per node on it
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr replace "$HEAD/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for node in "${NODES[@]}"; do
        local ns; ns=$(namespace "$node")
        ip netns list | grep -qw "$ns" || ip netns add "$ns"
        if ! ip link show "v-$node" >/dev/null 2>&1; then
            ip link add "v-$node" type veth peer name eth-mn netns "$ns"
        fi
        ip link set "v-$node" master "$BRIDGE" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip addr replace "$(address "$node")/24" dev eth-mn
        ip netns exec "$ns" ip link set eth-mn up
    done
}

start() {
    if [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
        log "already running (SLURM_CONF=$CONF)"; return
    fi
    check_prerequisites
    install_packages ip:iproute2 unshare:util-linux
    write_configs
    export SLURM_CONF=$CONF
    start_network
    start_munge
    start_mariadb
    slurmdbd 2>>"$DIR/log/slurmdbd.log"
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    # the controller under its own hostname (dlctl), on the host's network: the head of the cluster
    unshare --uts sh -c "hostname dlctl && exec slurmctld -f '$CONF'"
    hosts_file > "$DIR/etc/hosts"
    for node in "${NODES[@]}"; do
        # enter the node's network namespace only (`ip netns exec` would remount /sys, hiding the cgroup
        # file systems slurmd needs), with a hostname of its own and the cluster's hosts file in a private
        # mount namespace: what the node's jobs see, too
        mkdir -p "$DIR/spool/$node"
        nsenter --net="/run/netns/$(namespace "$node")" unshare --uts --mount --propagation private sh -c \
            "mount --bind '$DIR/etc/hosts' /etc/hosts && hostname $node && exec slurmd -f '$CONF'"
    done
    wait_for 90 "both nodes to be idle" sh -c "[ \"\$(sinfo -h -N -t idle -o %N | sort -u | wc -l)\" = ${#NODES[@]} ]"
    log "up: $(sinfo -h -N -o '%N %t' | tr '\n' ' '); export SLURM_CONF=$CONF"
}

stop() {
    export SLURM_CONF=$CONF
    if [ -f "$CONF" ] && [ -f "$DIR/run/slurmctld.pid" ] && command -v scancel >/dev/null; then
        scancel --user=root >/dev/null 2>&1 || true
    fi
    for node in "${NODES[@]}"; do stop_pid "$DIR/run/slurmd-$node.pid"; done
    stop_pid "$DIR/run/slurmctld.pid"
    stop_pid "$DIR/run/slurmdbd.pid"
    stop_pid "$DIR/run/mariadb.pid"
    stop_pid "$DIR/run/munged.pid"
    for node in "${NODES[@]}"; do
        ip link del "v-$node" 2>/dev/null || true
        ip netns del "$(namespace "$node")" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    log "stopped"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    env) echo "export SLURM_CONF=$CONF DITLAB_MULTINODE_HEAD=$HEAD" ;;
    *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
