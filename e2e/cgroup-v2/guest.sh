#!/bin/bash
# Runs as the first process of the virtual machine that e2e/cgroup-v2/check.sh boots (cgroup v2 only,
# this machine's root filesystem with a writable layer in memory): starts the local cluster as `make
# cluster-up` does, checks that it runs on cgroup v2 and that pods' limits are enforced there, runs the
# node's end-to-end test, takes the cluster down and checks that nothing of it is left. Its last line
# on the console is "cgroup-v2-check: PASSED" or "cgroup-v2-check: FAILED: why"; then it powers off.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

# braid.NAME=VALUE from the kernel command line (check.sh passes its paths that way).
arg() { sed -n "s/.*braid\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
log() { printf 'check: %s\n' "$*"; }
finish() {
  echo "cgroup-v2-check: $1"
  sync
  busybox poweroff -f
}

# What an init system would have done.
prepare() {
  mount -t tmpfs -o mode=755 tmpfs /run
  mount -t tmpfs tmpfs /tmp
  mkdir -p /dev/pts /dev/shm
  mount -t devpts devpts /dev/pts
  mount -t tmpfs tmpfs /dev/shm
  ln -sf /proc/self/fd /dev/fd
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
  mkdir -p /lib/modules
  mount --bind "$(arg modules)" /lib/modules
  # This machine has no kmod; the kernel loads modules on demand (iptables' tables, CNI's veth) with it.
  printf '#!/bin/sh\nexec busybox modprobe "$@"\n' >/sbin/modprobe
  chmod 755 /sbin/modprobe
  for module in bridge br_netfilter veth overlay; do busybox modprobe "$module" || log "modprobe $module failed"; done
  ip link set lo up
  hostname braid-cgroup-v2
  # The cluster's state (containerd's snapshots among it) on a tmpfs of its own: overlayfs cannot use
  # the root's overlay as its upper layer.
  mkdir -p /var/lib/braid-cgroup-v2
  mount -t tmpfs tmpfs /var/lib/braid-cgroup-v2
}

# Fails with $1 unless "${@:2}" succeeds.
check() {
  local what=$1
  shift
  "$@" || {
    log "failed: $what"
    return 1
  }
  log "ok: $what"
}

kubectl() { "$BRAID_TOOLS_DIR/kubectl" --kubeconfig "$KUBECONFIG" "$@"; }

# A pod of the node's busybox image running $3 under limits of $2 (memory) and 250m CPU.
limited_pod() {
  kubectl apply -f - <<EOF
apiVersion: v1
kind: Pod
metadata: { name: $1, namespace: default }
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: braid.dev/busybox:e2e
    command: [sh, -c, '$3']
    resources: { limits: { memory: $2, cpu: 250m }, requests: { memory: $2, cpu: 250m } }
EOF
}

# The pod's container's state, once it has terminated (reason and exit code), waiting up to 120 s.
terminated() {
  local state i
  for i in $(seq 240); do
    state=$(kubectl get pod "$1" -o jsonpath='{.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode}')
    [ "$state" = " " ] || {
      echo "$state"
      return
    }
    sleep 0.5
  done
  kubectl describe pod "$1" >&2
  echo "not terminated"
}

run() {
  set -e
  export BRAID_TOOLS_DIR XDG_CACHE_HOME BRAID_CLUSTER_DIR=/var/lib/braid-cgroup-v2/cluster
  BRAID_TOOLS_DIR=$(arg tools)
  XDG_CACHE_HOME=$(arg cache)
  log "kernel $(uname -r), $(nproc) CPUs; cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
  check "no cgroup v1 hierarchy is mounted" test ! -d /sys/fs/cgroup/memory
  check "cgroup v2 is mounted at /sys/fs/cgroup" test -f /sys/fs/cgroup/cgroup.controllers

  KUBECONFIG=$(bash "$ROOT/e2e/cluster/cluster.sh" up 2> >(tee /tmp/up.log >&2) | tail -n 1)
  check "the node found cgroup v2" grep -q 'Ready in .*(cgroup v2,' /tmp/up.log
  check "kubelet put the pods under /sys/fs/cgroup/kubepods" test -d /sys/fs/cgroup/kubepods

  # Limits: the container sees its own cgroup (v2 namespaces it), with the pod's limits in it.
  limited_pod limits 64Mi 'cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max'
  check "the limited pod ran" test "$(terminated limits)" = "Completed 0"
  limits=$(kubectl logs limits | tr '\n' ' ')
  log "the limited pod read: $limits"
  check "memory.max is the pod's 64Mi and cpu.max its 250m" test "$limits" = "67108864 25000 100000 "
  # ... and enforced: a container that holds more than its memory limit is killed by the kernel.
  limited_pod hog 32Mi 'x=$(head -c 100000000 /dev/zero | tr "\0" x); echo survived'
  check "a container over its 32Mi is OOMKilled" test "$(terminated hog)" = "OOMKilled 137"
  kubectl delete pod limits hog --wait=true >/dev/null

  log "the node's end-to-end test:"
  check "the node's end-to-end test passed" "$(arg test)" --test-threads 1

  bash "$ROOT/e2e/cluster/cluster.sh" down
  check "no kubepods cgroup is left" test ! -e /sys/fs/cgroup/kubepods
  check "no cgroup of ours is left" test -z "$(find /sys/fs/cgroup -mindepth 1 -maxdepth 1 -type d)"
}

prepare || finish "FAILED: the guest could not be prepared"
if (run); then
  finish PASSED
else
  log "the last lines of kubelet's log (the cluster's logs are lost with the VM):"
  tail -n 30 /var/lib/braid-cgroup-v2/cluster/logs/kubelet.log 2>/dev/null
  bash "$ROOT/e2e/cluster/cluster.sh" down >/dev/null 2>&1
  finish "FAILED: see the lines above"
fi
