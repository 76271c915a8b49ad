#!/usr/bin/env bash
# `cluster.sh down` (make cluster-down) removes what a cluster of ours left on this machine, whichever
# checkout, HOME or XDG_CACHE_HOME it was started from and even when its processes were killed: the
# situations a user meets after a crash, a `sudo make demo`, or a state directory deleted by hand. Each
# case lays down real leftovers (a bridge, iptables chains, a network namespace with a pod address, the
# cgroups of a pod and of an image check, a bind mount in a state directory), runs `down` from an unrelated state directory, and checks the machine.
#
# It changes the machine's network, so it runs only while no local cluster is up (make test runs it before
# starting one) and refuses otherwise.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RECORD=/run/braid-cluster.dir
WORK=$(mktemp -d /tmp/braid-leftovers.XXXXXX)
failures=0
# A v1 hierarchy, or the v2 one.
CGROUPS=/sys/fs/cgroup/pids
[ -d "$CGROUPS" ] || CGROUPS=/sys/fs/cgroup
POD_CGROUP=$CGROUPS/kubepods/besteffort/podbraid-leftovers-test
CHECK_CGROUP=$CGROUPS/braid-images-check/braid-images-check-leftovers-test

log() { printf 'leftovers-test: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
cleanup() {
  awk -v root="$WORK/" 'index($5, root) == 1 { print $5 }' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
  ip netns delete cni-braid-leftovers-test 2>/dev/null || true
  rmdir "$POD_CGROUP" "$CHECK_CGROUP" 2>/dev/null || true
  ip link delete braid0 2>/dev/null || true
  iptables -D INPUT -p tcp --dport 16443 -j BRAID-NODE-INPUT 2>/dev/null && iptables -X BRAID-NODE-INPUT
  iptables -t nat -D PREROUTING -j KUBE-SERVICES 2>/dev/null && iptables -t nat -X KUBE-SERVICES
  case $(cat "$RECORD" 2>/dev/null) in "$WORK"/*) rm -f "$RECORD" ;; esac
  rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || die "needs root (bridges, iptables, network namespaces), as the local cluster does"
if bash "$HERE/cluster.sh" status >/dev/null 2>&1; then
  die "a local cluster is up; this test changes the machine's network: run it after 'make cluster-down'"
fi
ip link show braid0 >/dev/null 2>&1 && die "braid0 exists before the test: run 'make cluster-down' first"

# What a killed node leaves: the bridge, the node's chains and kube-proxy's, a pod's network namespace,
# the (empty) cgroups of a pod and of an image check.
lay_network_leftovers() {
  mkdir -p "$POD_CGROUP" "$CHECK_CGROUP"
  ip link add braid0 type bridge
  ip addr add 10.244.0.1/24 dev braid0
  iptables -N BRAID-NODE-INPUT
  iptables -I INPUT -p tcp --dport 16443 -j BRAID-NODE-INPUT
  iptables -t nat -N KUBE-SERVICES
  iptables -t nat -I PREROUTING -j KUBE-SERVICES
  ip netns add cni-braid-leftovers-test
  ip link add blt-host type veth peer name eth0 netns cni-braid-leftovers-test
  ip link set blt-host master braid0
  ip netns exec cni-braid-leftovers-test ip addr add 10.244.0.77/24 dev eth0
}

# A state directory as `up` makes it, with the bind mount kubelet makes of its root.
lay_state() {
  mkdir -p "$1/node/kubelet" "$1/logs" "$1/pids" "$1/cmd"
  touch "$1/.braid-cluster"
  mount --bind "$1/node/kubelet" "$1/node/kubelet"
}

# Fails the case $1 when anything of the leftovers is still there.
check_clean() {
  local case=$1 found=()
  ip link show braid0 >/dev/null 2>&1 && found+=("the bridge braid0")
  iptables-save 2>/dev/null | grep -qE 'BRAID-NODE|KUBE-SERVICES' && found+=("iptables chains")
  [ -e /var/run/netns/cni-braid-leftovers-test ] && found+=("the pod network namespace")
  [ -e "$POD_CGROUP" ] && found+=("the cgroup $POD_CGROUP")
  [ -e "$CHECK_CGROUP" ] && found+=("the cgroup $CHECK_CGROUP")
  awk -v root="$WORK/" 'index($5, root) == 1' /proc/self/mountinfo | grep -q . && found+=("mounts in $WORK")
  shift
  local dir
  for dir in "$@"; do [ ! -e "$dir" ] || found+=("the state directory $dir"); done
  if [ ${#found[@]} -eq 0 ]; then
    log "ok: $case"
  else
    log "FAILED: $case: still there: ${found[*]}"
    failures=$((failures + 1))
  fi
}

saved_record=$(cat "$RECORD" 2>/dev/null || true)

# 1. A killed cluster whose state directory is recorded (started with another HOME or XDG_CACHE_HOME).
lay_network_leftovers
lay_state "$WORK/recorded"
echo "$WORK/recorded" >"$RECORD"
BRAID_CLUSTER_DIR=$WORK/elsewhere bash "$HERE/cluster.sh" down >"$WORK/down.log" 2>&1 ||
  { cat "$WORK/down.log" >&2; log "FAILED: down exited non-zero"; failures=$((failures + 1)); }
check_clean "a killed cluster found through its record" "$WORK/recorded"
[ ! -e "$RECORD" ] || { log "FAILED: the record $RECORD still exists"; failures=$((failures + 1)); }

# 2. The same without a record (a cluster started before the record existed): found by its node's mount.
lay_network_leftovers
lay_state "$WORK/mounted"
BRAID_CLUSTER_DIR=$WORK/elsewhere bash "$HERE/cluster.sh" down >"$WORK/down.log" 2>&1 ||
  { cat "$WORK/down.log" >&2; log "FAILED: down exited non-zero"; failures=$((failures + 1)); }
check_clean "a killed cluster found through its node's mount" "$WORK/mounted"

# 3. No state directory at all (deleted by hand): found by name and address.
lay_network_leftovers
BRAID_CLUSTER_DIR=$WORK/elsewhere bash "$HERE/cluster.sh" down >"$WORK/down.log" 2>&1 ||
  { cat "$WORK/down.log" >&2; log "FAILED: down exited non-zero"; failures=$((failures + 1)); }
check_clean "leftovers whose state directory was deleted"
grep -q "state directory is gone" "$WORK/down.log" ||
  { log "FAILED: down did not say what it removed"; failures=$((failures + 1)); }

[ -z "$saved_record" ] || [ ! -e "$saved_record/.braid-cluster" ] || echo "$saved_record" >"$RECORD"
[ "$failures" = 0 ] || die "$failures case(s) failed; cluster.sh's output of the last case is above or in the log"
log "cluster.sh down removed every kind of leftover"
