# shellcheck shell=bash
# The node of the local cluster, sourced by cluster.sh (which defines STATE, PKI, log, die, start, stop,
# running, launch, wait_until, report_failure, issue, render, write_kubeconfig): containerd and runc from Debian,
# kubelet and kube-proxy (iptables mode) from the pinned Kubernetes, the CNI bridge on a private range that
# lives only inside this machine, and CoreDNS serving the cluster domain from the API.
#
# What it puts outside the state directory, and `down` removes again: the bridge braid0 (and the pods'
# veths), the pods' network namespaces (/var/run/netns/cni-*, containerd 1.6 puts them there), iptables
# chains KUBE-*, CNI-* and BRAID-* in both address families, cgroups /sys/fs/cgroup/*/kubepods (v1)
# or /sys/fs/cgroup/kubepods (v2) and braid-images-check beside them (images/build.sh's checks), and
# the sysctls it sets (the original values are restored). Paths that kubelet and containerd hard-code, and
# which `down` removes when `up` found them absent (HOST_DIRS): kubelet's device plugin socket in
# /var/lib/kubelet, its log links in /var/log/containers, CNI result caches in /var/lib/cni, and shim
# sockets in /run/containerd.
#
# Addresses (none is routed off this machine):
#   10.244.0.0/16  pod range (kube-proxy's clusterCIDR); this node's pods get 10.244.0.0/24
#   10.244.0.1     braid0, the node's IP: kubelet, CoreDNS (port 53) and the API server (for pods) listen there
#   10.96.0.10     the kube-dns Service (kubelet's clusterDNS), whose endpoint is CoreDNS on 10.244.0.1
#   10.244.0.1:5000  the image registry (CNCF Distribution, TLS from the cluster CA, storage node/registry)
# Images come from that registry only. containerd pulls REGISTRY/NAME directly and braid.dev/NAME through it
# as that name's mirror (node/containerd/certs.d, containerd's hosts.toml), so the images of the chart's
# defaults, the CRD's proxy image and the tests' manifests (braid.dev/...) are pulled by name like any
# image. Every other registry is given a proxy that refuses (127.0.0.1:9), so such a pull fails at once
# ("proxyconnect tcp: ... 127.0.0.1:9") instead of going off the machine.
#
# The node's configuration files are templates/{containerd.toml,cni.conflist,kubelet.yaml,...}, rendered
# into the state directory with the variables below (render, in cluster.sh).

NODE_NAME=braid-e2e
BRIDGE=braid0
CLUSTER_CIDR=10.244.0.0/16
POD_SUBNET=10.244.0.0/24
NODE_IP=10.244.0.1
DNS_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
REGISTRY_PORT=5000
REGISTRY=$NODE_IP:$REGISTRY_PORT
PAUSE_IMAGE=braid.dev/pause:3.10
BUSYBOX_IMAGE=braid.dev/busybox:e2e
# CNI network name: also the prefix of libcni's result cache files, which `down` removes.
CNI_NETWORK=braid-e2e
# Loopback ports of the node's health endpoints (the bridge-side ports are the usual 10250 and 53).
KUBELET_HEALTHZ_PORT=10248
KUBE_PROXY_HEALTHZ_PORT=10256
KUBE_PROXY_METRICS_PORT=10249
COREDNS_READY_PORT=18181

NODE=$STATE/node
CONTAINERD_SOCK=$NODE/containerd/containerd.sock
HOST_DIRS=(/var/lib/kubelet /var/log/containers /var/lib/cni /run/containerd)
# Sysctls that the node changes (ip_forward and bridge-nf here; the rest kubelet sets at start, as it
# does on every node): their values before `up`, restored by `down`.
NODE_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes)

ctr_node() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }
kubectl_admin() { "$STATE/bin/kubectl" --kubeconfig="$KUBECONFIG_PATH" "$@"; }

# Fails unless every program the node runs is installed (deps.sh installs them).
node_check_deps() {
  local pair missing=()
  for pair in containerd:containerd containerd-shim-runc-v2:containerd ctr:containerd runc:runc \
    umoci:umoci conntrack:conntrack ip:iproute2 iptables:iptables ip6tables:iptables mount:mount \
    mountpoint:util-linux pgrep:procps sysctl:procps; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  # The test image's whole root filesystem: it must be the static busybox.
  [ "$(dpkg-query -W -f '${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] || missing+=(busybox-static)
  { [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ]; } ||
    missing+=(containernetworking-plugins)
  [ ${#missing[@]} -eq 0 ] || die "the node needs: apt-get install -y ${missing[*]} (or run 'make deps')"
  case "$(cgroup_mode)" in
    v1) ;;
    v2)
      # kubelet (cgroupfs driver) creates /sys/fs/cgroup/kubepods and needs these controllers there.
      local controller
      for controller in cpu memory pids; do
        grep -qw "$controller" /sys/fs/cgroup/cgroup.controllers ||
          die "cgroup v2 without the $controller controller (/sys/fs/cgroup/cgroup.controllers): kubelet needs cpu, memory and pids"
      done
      ;;
    *) die "no cgroups found at /sys/fs/cgroup (neither a v1 memory hierarchy nor a v2 unified one): kubelet and runc need them" ;;
  esac
}

# v1 (separate hierarchies such as /sys/fs/cgroup/memory, a hybrid setup included) or v2 (one unified
# hierarchy, as on Debian 12, Ubuntu 22.04 and later); kubelet and containerd use the cgroupfs driver
# on both, so they agree whatever the mode.
cgroup_mode() {
  if [ -d /sys/fs/cgroup/memory ]; then
    echo v1
  elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    echo v2
  else
    echo none
  fi
}

# Where kubelet puts the pods' cgroups, and images/build.sh the containers it checks the images with:
# one directory per v1 hierarchy, or the one of v2.
node_cgroups() {
  find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/*/braid-images-check \
    /sys/fs/cgroup/braid-images-check -maxdepth 0 -type d 2>/dev/null || true
}
# Removes them, innermost first (empty by now: rmdir leaves one with a process in it).
remove_node_cgroups() {
  local dir
  for dir in $(node_cgroups); do
    find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}

# Fails when the pod range is routed here already (another cluster, a VPN): the bridge would shadow it.
node_check_network() {
  local routes
  routes=$(ip -4 route show match "$CLUSTER_CIDR")
  routes=$(grep -v "^default" <<<"$routes" || true)
  [ -z "$routes" ] || die "$CLUSTER_CIDR is already routed on this machine ($routes); run 'cluster.sh down', or free the range"
  # Left by a cluster that `down` could not find.
  if node_network_left; then
    die "the bridge $BRIDGE or the iptables chains BRAID-NODE-* exist already: run 'cluster.sh down' (make cluster-down)"
  fi
  # CoreDNS listens on port 53 of the bridge, which a DNS server on the wildcard address would hold (one
  # on a loopback address, like systemd-resolved's 127.0.0.53, is no conflict).
  local holder
  holder=$(ss -Hlnup "sport = :53")
  holder=$(grep -E "(0\.0\.0\.0|\*|\[::\]|${NODE_IP//./\\.}):53 " <<<"$holder" || true)
  [ -z "$holder" ] || die "UDP port 53 is already in use: $holder"
}

# Certificates of the node's components, signed by the cluster CA (run inside $PKI, after make_pki).
node_pki() {
  render kubelet-serving.ext kubelet-serving.ext NODE_IP NODE_NAME
  # Node authorizer: user system:node:NAME in group system:nodes may act for that node only.
  issue kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" client.ext
  issue kubelet-serving "/CN=$NODE_NAME" kubelet-serving.ext
  # The default RBAC binding system:node-proxier grants user system:kube-proxy what kube-proxy needs.
  issue kube-proxy /CN=system:kube-proxy client.ext
  # Bound by the ClusterRole system:coredns that node_cluster_objects applies.
  issue coredns /CN=system:coredns client.ext
  # The API server's client certificate towards kubelets (logs, exec, port-forward).
  issue apiserver-kubelet-client /O=system:masters/CN=kube-apiserver-kubelet-client client.ext
  # The registry's serving certificate: containerd, crane and Helm verify it against the cluster CA.
  render registry.ext registry.ext NODE_IP
  issue registry /CN=braid-e2e-registry registry.ext
}

# sysctl $1's current value, or empty when this kernel lacks it.
sysctl_value() { sysctl -n "$1" 2>/dev/null || true; }

# The bridge the pods attach to, with the node's IP; the Service range routed onto it so that a
# ClusterIP nothing answers for dies on the bridge rather than leaving by the default route; and the
# firewall chains that keep the node to itself.
node_network() {
  local s
  mkdir -p "$NODE"
  for s in "${NODE_SYSCTLS[@]}"; do echo "$s=$(sysctl_value "$s")"; done >"$NODE/sysctl.orig"
  for s in "${HOST_DIRS[@]}"; do [ -e "$s" ] || echo "$s"; done >"$NODE/host-dirs.created"
  sysctl -qw net.ipv4.ip_forward=1
  # Pod-to-Service-to-pod traffic on one bridge must pass iptables, or replies skip kube-proxy's NAT.
  sysctl -qw net.bridge.bridge-nf-call-iptables=1 net.bridge.bridge-nf-call-ip6tables=1 ||
    die "cannot set net.bridge.bridge-nf-call-iptables: the kernel lacks br_netfilter (modprobe br_netfilter)"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/${POD_SUBNET#*/}" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  ip route add "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  # Pods reach this machine only: nothing from the pod range is forwarded off it. And the API server,
  # which listens on every address so that pods reach it through the "kubernetes" Service, answers on
  # loopback and the bridge only.
  iptables -N BRAID-NODE-FORWARD
  iptables -A BRAID-NODE-FORWARD -s "$CLUSTER_CIDR" ! -o "$BRIDGE" -j DROP
  iptables -I FORWARD -j BRAID-NODE-FORWARD
  iptables -N BRAID-NODE-INPUT
  iptables -A BRAID-NODE-INPUT -i lo -j RETURN
  iptables -A BRAID-NODE-INPUT -i "$BRIDGE" -j RETURN
  iptables -A BRAID-NODE-INPUT -j DROP
  iptables -I INPUT -p tcp --dport "$API_PORT" -j BRAID-NODE-INPUT
}

# OCI image archive $2 named by umoci tag $3, whose layer is directory $1, entrypoint $4, user $5.
build_image() {
  local rootfs=$1 out=$2 tag=$3 entrypoint=$4 user=$5 work
  work=$(mktemp -d "$(dirname "$out")/.image.XXXXXX")
  {
    umoci init --layout "$work/layout" &&
      umoci new --image "$work/layout:$tag" &&
      umoci insert --image "$work/layout:$tag" "$rootfs" / &&
      umoci config --image "$work/layout:$tag" --config.entrypoint "$entrypoint" --config.user "$user" \
        --config.workingdir / &&
      umoci gc --layout "$work/layout" &&
      tar -C "$work/layout" -cf "$work/image.tar" .
  } >>"$STATE/logs/images.log" 2>&1 || {
    rm -rf "$work"
    die "building $out with umoci failed: see $STATE/logs/images.log"
  }
  mv -f "$work/image.tar" "$out"
  rm -rf "$work"
}

# The node's own images as OCI archives, cached beside the tools and rebuilt when their binary changes:
#   braid.dev/pause:3.10    the pod sandbox (containerd's sandbox_image), the pause program of e2e/tools
#   braid.dev/busybox:e2e   Debian's static busybox as the whole root filesystem: sh, httpd, wget, nslookup
node_build_images() (
  local dir=$STATE/bin/images rootfs applet
  # Image files are readable by every user a container may run as (cluster.sh's umask is 077).
  umask 022
  mkdir -p "$dir"
  if [ ! -f "$dir/pause.tar" ] || [ "$STATE/bin/pause" -nt "$dir/pause.tar" ]; then
    rootfs=$(mktemp -d "$dir/.rootfs.XXXXXX")
    chmod 0755 "$rootfs"
    install -m 0755 "$STATE/bin/pause" "$rootfs/pause"
    build_image "$rootfs" "$dir/pause.tar" 3.10 /pause 65535:65535
    rm -rf "$rootfs"
  fi
  local busybox
  busybox=$(command -v busybox)
  if [ ! -f "$dir/busybox.tar" ] || [ "$busybox" -nt "$dir/busybox.tar" ]; then
    rootfs=$(mktemp -d "$dir/.rootfs.XXXXXX")
    mkdir -p "$rootfs"/{bin,etc,tmp,www}
    chmod 1777 "$rootfs/tmp"
    install -m 0755 "$busybox" "$rootfs/bin/busybox"
    for applet in $("$busybox" --list); do
      [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
    done
    printf 'root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
    echo 'busybox httpd' >"$rootfs/www/index.html"
    chmod 0755 "$rootfs"
    build_image "$rootfs" "$dir/busybox.tar" e2e /bin/sh 0:0
    rm -rf "$rootfs"
  fi
)

# crane on the node's registry: TLS verified against the cluster CA, never through a proxy.
crane_node() { SSL_CERT_FILE=$PKI/ca.crt NO_PROXY=$NODE_IP no_proxy=$NODE_IP "$STATE/bin/crane" "$@"; }

# Pushes the node's own images to its registry, under the names containerd then pulls through the
# braid.dev mirror (braid.dev/pause:3.10 is REGISTRY/pause:3.10).
node_push_images() {
  local name layout
  for name in pause:3.10 busybox:e2e; do
    layout=$(mktemp -d "$STATE/bin/images/.layout.XXXXXX")
    tar -C "$layout" -xf "$STATE/bin/images/${name%%:*}.tar"
    crane_node push "$layout" "$REGISTRY/$name" >>"$STATE/logs/images.log" 2>&1 || {
      rm -rf "$layout"
      die "pushing ${name%%:*}.tar to $REGISTRY/$name failed: see $STATE/logs/images.log"
    }
    rm -rf "$layout"
  done
}

registry_ready() {
  [ "$(curl -sS --noproxy '*' --max-time 2 --cacert "$PKI/ca.crt" -o /dev/null -w '%{http_code}' \
    "https://$REGISTRY/v2/" 2>/dev/null)" = 200 ]
}

# The registry on the node's address; its blobs in node/registry (gone with the state directory). No
# tracing exporter: the registry would otherwise try to send spans to localhost:4318.
start_registry() (
  umask 022
  export OTEL_TRACES_EXPORTER=none OTEL_SDK_DISABLED=true
  start registry "$STATE/bin/registry" serve "$NODE/registry.yml"
)

# The node's configuration files, rendered from templates/ into the state directory.
node_write_configs() {
  mkdir -p "$NODE"/{containerd,cni,cni-ipam,kubelet,pod-logs}
  render containerd.toml "$NODE/containerd/config.toml" NODE CONTAINERD_SOCK PAUSE_IMAGE
  # containerd's registry hosts: the registry by its address, and as the mirror of braid.dev.
  local name
  for name in "$REGISTRY" braid.dev; do
    mkdir -p "$NODE/containerd/certs.d/$name"
    render registry-hosts.toml "$NODE/containerd/certs.d/$name/hosts.toml" REGISTRY PKI
  done
  mkdir -p "$NODE/registry"
  render registry.yml "$NODE/registry.yml" NODE REGISTRY PKI
  # ipMasq off and no portmap: nothing leaves the machine (BRAID-NODE-FORWARD drops it anyway), so there
  # is nothing to masquerade. hairpinMode: a pod reaches itself through its own Service.
  render cni.conflist "$NODE/cni/10-braid.conflist" CNI_NETWORK BRIDGE POD_SUBNET NODE_IP NODE
  # Pods get the cluster's DNS and search path only: the host's resolver is not theirs to use.
  render resolv.conf "$NODE/resolv.conf" NODE_IP CLUSTER_DOMAIN
  render kubelet.yaml "$NODE/kubelet/config.yaml" NODE_IP KUBELET_HEALTHZ_PORT PKI CONTAINERD_SOCK DNS_IP \
    CLUSTER_DOMAIN NODE
  render kube-proxy.yaml "$NODE/kube-proxy.yaml" NODE_NAME PKI CLUSTER_CIDR KUBE_PROXY_HEALTHZ_PORT \
    KUBE_PROXY_METRICS_PORT
  render Corefile "$NODE/Corefile" CLUSTER_DOMAIN NODE_IP COREDNS_READY_PORT PKI
  render cluster-objects.yaml "$NODE/cluster-objects.yaml" DNS_IP NODE_IP NODE_NAME
  write_kubeconfig "$PKI/kubelet.kubeconfig" kubelet
  write_kubeconfig "$PKI/kube-proxy.kubeconfig" kube-proxy
  write_kubeconfig "$PKI/coredns.kubeconfig" coredns
}

# CoreDNS's read access and the kube-dns Service with its endpoint (templates/cluster-objects.yaml).
node_cluster_objects() {
  kubectl_admin apply --server-side --force-conflicts --field-manager=braid-cluster \
    -f "$NODE/cluster-objects.yaml" >/dev/null
}

node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
containerd_ready() { ctr_node version >/dev/null 2>&1; }
coredns_ready() {
  [ "$(curl -sS --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$COREDNS_READY_PORT/ready" 2>/dev/null)" = 200 ]
}

# Fails the `up` in progress: reports component $1's log tail with message $2, tears down what started.
node_fail() {
  report_failure "$1" "$2"
  stop_all
  node_teardown
  exit 1
}

# Starts node component $1 ("$2"... its command) with the umask a service manager would give it, not
# cluster.sh's 077: containerd and kubelet create the containers' root directories, /etc/resolv.conf and
# /etc/hosts with it, which would make them unreadable to a container that does not run as root.
start_node_component() (
  umask 022
  start "$@"
)

# containerd of the node (also for `down`, which may start it again to remove its containers). The proxy
# that refuses: see the header. NO_PROXY names the node's registry only, so that no inherited value
# exempts another.
launch_containerd() (
  umask 022
  export HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 \
    https_proxy=http://127.0.0.1:9 NO_PROXY=$NODE_IP no_proxy=$NODE_IP
  if [ $# -gt 0 ]; then start containerd "$@"; else launch containerd; fi
)

node_up() {
  local t0
  t0=$(now_us)
  node_write_configs
  start_registry
  wait_until 30 registry registry_ready || node_fail registry "the registry did not answer https://$REGISTRY/v2/ within 30 s"
  launch_containerd containerd --config "$NODE/containerd/config.toml"
  wait_until 30 containerd containerd_ready || node_fail containerd "containerd did not answer on $CONTAINERD_SOCK within 30 s"
  node_build_images
  node_push_images
  node_cluster_objects
  start_node_component kubelet "$STATE/bin/kubelet" --config="$NODE/kubelet/config.yaml" \
    --kubeconfig="$PKI/kubelet.kubeconfig" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --root-dir="$NODE/kubelet" --cert-dir="$NODE/kubelet/pki"
  start_node_component kube-proxy "$STATE/bin/kube-proxy" --config="$NODE/kube-proxy.yaml"
  start_node_component coredns "$STATE/bin/coredns" -conf "$NODE/Corefile"
  wait_until 90 kubelet node_ready || node_fail kubelet "node $NODE_NAME did not become Ready within 90 s"
  wait_until 30 coredns coredns_ready || node_fail coredns "CoreDNS did not report ready within 30 s"
  log "node $NODE_NAME Ready in $(since "$t0") s (cgroup $(cgroup_mode), pods $POD_SUBNET on $BRIDGE, DNS $DNS_IP)"
}

# Kills every container of the node's containerd and deletes its tasks (the shims exit and unmount the
# containers' root filesystems), and records the containers (node/containers.list) and the network
# namespaces of the pod sandboxes (node/netns.list) for node_teardown. containerd is started again for
# this when it is not running; the processes are killed through their cgroups too.
node_kill_containers() {
  local ids id i started=0
  [ -d "$NODE" ] || return 0 # the node never started
  if [ -f "$STATE/cmd/containerd.args" ] && ! running containerd && [ -d "$NODE/containerd/root" ]; then
    log "starting containerd again to remove its containers"
    launch_containerd
    started=1
    wait_until 30 containerd containerd_ready || log "containerd did not come back: removing its containers by hand"
  fi
  if running containerd; then
    ids=$(ctr_node containers ls -q 2>/dev/null || true)
    [ -z "$ids" ] || echo "$ids" >>"$NODE/containers.list"
    for id in $ids; do
      ctr_node containers info "$id" 2>/dev/null | grep -o '/var/run/netns/cni-[0-9a-f-]*' | head -n 1 || true
    done | sort -u >>"$NODE/netns.list"
    ids=$(ctr_node tasks ls -q 2>/dev/null || true)
    [ -z "$ids" ] || log "killing $(wc -w <<<"$ids") containers"
    for id in $ids; do ctr_node tasks kill --signal SIGKILL "$id" >/dev/null 2>&1 || true; done
    for ((i = 0; i < 50; i++)); do
      [ -n "$(ctr_node tasks ls 2>/dev/null | awk 'NR > 1 && $3 != "STOPPED"')" ] || break
      sleep 0.1
    done
    for id in $ids; do ctr_node tasks delete "$id" >/dev/null 2>&1 || true; done
  fi
  # Whatever is left in the pods' cgroups (a shim that containerd lost) is a container of this node.
  local procs
  mapfile -t procs < <(find /sys/fs/cgroup/pids/kubepods /sys/fs/cgroup/kubepods -name cgroup.procs \
    -exec cat {} + 2>/dev/null || true)
  [ ${#procs[@]} -eq 0 ] || kill -KILL "${procs[@]}" 2>/dev/null || true
  [ "$started" = 0 ] || stop containerd
}

# Unmounts mount point $1 (lazily when busy).
unmount() { umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || log "cannot unmount $1"; }

# Removes what the node made outside the state directory and every mount inside it; the processes must
# be stopped first (stop_all). Safe to run twice, and when `up` failed half-way.
node_teardown() {
  local shim pid ns mnt
  [ -d "$NODE" ] || return 0 # the node never started
  # Shims of this containerd that outlived it (their -address is our socket).
  for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" 2>/dev/null || true); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  # The pods' network namespaces (containerd has removed those of the sandboxes it stopped): deleting one
  # removes its veth, and with it the bridge port.
  if [ -f "$NODE/netns.list" ]; then
    while read -r ns; do
      { [ -n "$ns" ] && [ -e "$ns" ]; } || continue
      ! mountpoint -q "$ns" || unmount "$ns"
      rm -f "$ns"
    done <"$NODE/netns.list"
  fi
  # Every mount under the state directory, deepest first: kubelet's own bind mount of its root, the pods'
  # volumes (tmpfs), the containers' root filesystems (overlay) and shm.
  while read -r mnt; do
    unmount "$mnt"
  done < <(awk -v root="$STATE/" 'index($5, root) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
  for shim in /run/containerd/s/*; do
    [ -S "$shim" ] || continue
    # A socket no process listens on any more (ours died with SIGKILL); live shims of any other
    # containerd keep theirs.
    [ -n "$(ss -Hxl "src = $shim" 2>/dev/null)" ] || rm -f "$shim"
  done
  remove_node_cgroups
  find /var/log/containers -maxdepth 1 -lname "$NODE/*" -delete 2>/dev/null || true
  # libcni's result caches of this node's sandboxes: NETWORK-CONTAINERID-IFNAME (the bridge network and
  # containerd's cni-loopback).
  if [ -f "$NODE/containers.list" ]; then
    while read -r id; do
      [ -z "$id" ] || rm -f /var/lib/cni/results/*-"$id"-*
    done <"$NODE/containers.list"
  fi
  # The hard-coded directories that this cluster created: kubelet's socket goes, then every empty directory;
  # anything else in them is not ours and stays (node_verify_gone reports it).
  if [ -f "$NODE/host-dirs.created" ]; then
    rm -f /var/lib/kubelet/device-plugins/kubelet.sock
    while read -r dir; do
      [ ! -d "$dir" ] || find "$dir" -depth -type d -empty -delete 2>/dev/null || true
    done <"$NODE/host-dirs.created"
  fi
  ip link delete "$BRIDGE" 2>/dev/null || true
  node_remove_chains
  if [ -f "$NODE/sysctl.orig" ]; then
    while IFS='=' read -r key value; do
      [ -z "$value" ] || sysctl -qw "$key=$value" 2>/dev/null || log "cannot restore $key=$value"
    done <"$NODE/sysctl.orig"
    rm -f "$NODE/sysctl.orig"
  fi
}

# iptables: the rules that jump to our chains (in chains of others, INPUT, FORWARD, ...), then the chains.
node_remove_chains() {
  local t table chain line
  for t in iptables ip6tables; do
    command -v "$t-save" >/dev/null || continue
    for table in filter nat mangle raw; do
      while read -r line; do
        eval "$t -t $table ${line/#-A /-D }" 2>/dev/null || true
      done < <("$t-save" -t "$table" 2>/dev/null | grep -E '^-A [^ ]+ .*-[jg] (KUBE|CNI|BRAID)-' |
        grep -Ev '^-A (KUBE|CNI|BRAID)-' || true)
      for chain in $("$t-save" -t "$table" 2>/dev/null | awk '/^:(KUBE|CNI|BRAID)-/ { print substr($1, 2) }'); do
        "$t" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$t-save" -t "$table" 2>/dev/null | awk '/^:(KUBE|CNI|BRAID)-/ { print substr($1, 2) }'); do
        "$t" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# True when the node's bridge or its BRAID-NODE-* chains exist.
node_network_left() {
  ip link show "$BRIDGE" >/dev/null 2>&1 || iptables-save -t filter 2>/dev/null | grep -qE '^:BRAID-NODE-'
}

# The pods' network namespaces on this machine that hold an address of the pod subnet.
node_pod_netns() {
  local ns
  for ns in /var/run/netns/cni-*; do
    [ -e "$ns" ] || continue
    ip netns exec "$(basename "$ns")" ip -4 -o addr show 2>/dev/null | grep -q " ${POD_SUBNET%.*}\." && echo "$ns"
  done
  return 0
}

# What a node of ours leaves on the machine when its state directory is gone (deleted by hand, or a
# different BRAID_CLUSTER_DIR): found by name and address rather than from the state's lists, and removed
# when no node is running (kubelet's port free), since it then belongs to no live cluster. The sysctls'
# earlier values went with the state; they are left as the node set them, and said so.
node_remove_orphans() {
  local netns holder ns
  netns=$(node_pod_netns)
  node_network_left || [ -n "$netns" ] || return 0
  holder=$(ss -Hltnp "sport = :10250")
  [ -z "$holder" ] || die "the bridge $BRIDGE or the chains BRAID-NODE-* exist, and a kubelet runs (port 10250: $holder):
  a cluster started with another BRAID_CLUSTER_DIR? Run 'BRAID_CLUSTER_DIR=<its directory> $0 down'"
  log "removing what a cluster of ours whose state directory is gone left: $BRIDGE, the KUBE-*, CNI-* and BRAID-*" \
    "chains, $(wc -w <<<"$netns") pod network namespaces, the kubepods cgroups (the sysctls ip_forward and" \
    "bridge-nf-call-iptables stay as that cluster set them)"
  for ns in $netns; do
    # Processes of the dead node's pods (runc containers outlive a SIGKILLed kubelet and containerd).
    ip netns pids "$(basename "$ns")" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns delete "$(basename "$ns")" 2>/dev/null || true
  done
  ip link delete "$BRIDGE" 2>/dev/null || true
  node_remove_chains
  remove_node_cgroups
}

# What `down` promises, checked: prints each leftover of the node, and fails if there is any.
node_verify_gone() {
  local leftovers=() out t
  out=$(awk -v root="$STATE/" 'index($5, root) == 1 { print $5 }' /proc/self/mountinfo)
  [ -z "$out" ] || leftovers+=("mounts: $out")
  ! ip link show "$BRIDGE" >/dev/null 2>&1 || leftovers+=("link $BRIDGE")
  for t in iptables ip6tables; do
    command -v "$t-save" >/dev/null || continue
    out=$("$t-save" 2>/dev/null | grep -E 'KUBE|CNI|BRAID' || true)
    [ -z "$out" ] || leftovers+=("$t rules: $out")
  done
  out=$(node_cgroups)
  [ -z "$out" ] || leftovers+=("cgroups: $out")
  if [ -f "$NODE/netns.list" ]; then
    while read -r t; do [ -z "$t" ] || [ ! -e "$t" ] || leftovers+=("network namespace $t"); done <"$NODE/netns.list"
  fi
  if [ -f "$NODE/host-dirs.created" ]; then
    while read -r t; do [ -z "$t" ] || [ ! -e "$t" ] || leftovers+=("$t: $(find "$t" | head -n 5 | tr '\n' ' ')"); done <"$NODE/host-dirs.created"
  fi
  out=$(pgrep -af "containerd-shim-runc-v2 .*-address $CONTAINERD_SOCK" || true)
  [ -z "$out" ] || leftovers+=("shims: $out")
  if [ ${#leftovers[@]} -gt 0 ]; then
    log "error: the node left behind:"
    printf '  %s\n' "${leftovers[@]}" >&2
    return 1
  fi
}
