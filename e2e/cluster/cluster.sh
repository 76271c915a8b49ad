#!/usr/bin/env bash
# A local Kubernetes for Braid's e2e tests, as plain host processes: the control plane (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler) on 127.0.0.1, and one node (containerd and runc
# from Debian, kubelet, kube-proxy in iptables mode, the CNI bridge, CoreDNS) whose pods live on a bridge
# inside this machine (node.sh says what it creates and where), and the image registry the node pulls
# from (CNCF Distribution on the node's address, TLS from the cluster CA). No Docker.
#
# `cluster.sh help` lists the commands.
#
# State directory: $BRAID_CLUSTER_DIR when set; else the machine's cluster's (RECORD below); else
# $XDG_CACHE_HOME/braid/cluster, i.e. ~/.cache/braid/cluster:
#   admin.kubeconfig  client certificate of user "admin" in group system:masters
#   bin/              symlink to the tools directory: bin/kubectl, bin/helm, bin/etcd, ...
#   pki/              CA, serving and client certificates, service-account key pair, component kubeconfigs
#   etcd/             etcd's data
#   node/             containerd (socket node/containerd/containerd.sock), kubelet, CNI and CoreDNS config
#   logs/NAME.log  pids/NAME.pid  cmd/NAME.args (NAME's exact argv, one argument a line)
#
# Environment (ports bind 127.0.0.1, except the API server's, which pods reach on the node's bridge address
# too, and the node's kubelet and DNS on that address; node.sh lists them):
#   BRAID_API_PORT (16443), BRAID_ETCD_PORT (23790), BRAID_ETCD_PEER_PORT (23800)
#   BRAID_TOOLS_DIR is passed on to build-tools.sh, which builds the binaries on first use (~10 min cold).
set -euo pipefail
umask 077 # the state directory holds private keys, and Helm warns about group-readable kubeconfigs

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The configuration files of the cluster's components, with ${NAME} where a value goes (render).
TEMPLATES=$HERE/templates
# The machine has one local cluster (its bridge, ports and chains are machine-wide), wherever its state
# directory is: `up` writes that directory's path to RECORD, and every command run without
# BRAID_CLUSTER_DIR acts on the recorded cluster, so a `make cluster-down` from another checkout, another
# HOME (sudo) or another XDG_CACHE_HOME still finds it. /run is emptied at boot, as are the bridge and
# the chains.
RECORD=/run/braid-cluster.dir
# Prints the recorded state directory when it still holds a cluster made by this script.
recorded_state() {
  local dir
  dir=$(cat "$RECORD" 2>/dev/null) || return 1
  [ -n "$dir" ] && [ -e "$dir/.braid-cluster" ] && echo "$dir"
}
if [ -z "${BRAID_CLUSTER_DIR:-}" ] && STATE=$(recorded_state); then
  :
else
  STATE=$(realpath -m "${BRAID_CLUSTER_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/braid/cluster}")
fi
API_PORT=${BRAID_API_PORT:-16443}
ETCD_PORT=${BRAID_ETCD_PORT:-23790}
ETCD_PEER_PORT=${BRAID_ETCD_PEER_PORT:-23800}
# Routed by kube-proxy on the node; its first address, 10.96.0.1, is the in-cluster "kubernetes" Service,
# so the serving certificate carries it.
SERVICE_CIDR=10.96.0.0/16

PKI=$STATE/pki
KUBECONFIG_PATH=$STATE/admin.kubeconfig
# Written by `up`; `down` deletes only a directory that has it, so a mistyped BRAID_CLUSTER_DIR is never wiped.
MARKER=$STATE/.braid-cluster
# Start order; stopped in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler registry containerd kubelet kube-proxy coredns)

# shellcheck source=SCRIPTDIR/node.sh
source "$HERE/node.sh"

log() { printf 'cluster: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
need() { command -v "$1" >/dev/null || die "'$1' not found: apt-get install -y $2"; }

usage() {
  cat <<'EOF'
Usage: cluster.sh COMMAND
  up                 start the cluster, or reuse the one already running; the last stdout line is the
                     absolute path of the admin kubeconfig (KUBECONFIG=$(cluster.sh up) works)
  down               stop every process that `up` started and delete the state directory
  status             exit 0 when the API server answers /readyz, non-zero otherwise
  restart-apiserver  stop kube-apiserver and start it again with the same command line
  kubeconfig         print the admin kubeconfig path (fails when the cluster is not up)
  run NAME CMD...    start CMD in the background against the cluster (the demo's operator, say), replacing
                     a previous NAME; `down` stops it before the control plane. Log: logs/NAME.log
  ctr ARGS...        Debian's ctr on the node's containerd, namespace k8s.io (the one kubelet uses), e.g.
                     `cluster.sh ctr images ls`
  registry           print the node registry's address (HOST:PORT), its CA certificate's path, the crane
                     binary's path and containerd's registry hosts directory (`ctr images pull
                     --hosts-dir`), one a line; images/build.sh pushes and pulls with them
  help               this text
EOF
}

# Writes templates/$1 to file $2 with each ${NAME} replaced by the value of the shell variable NAME, for
# the NAMEs "$3"... only. A ${...} left over is an error: a template and its caller cannot drift apart
# unnoticed. (Plain bash rather than envsubst, which is not in a minimal Debian.)
render() {
  local template=$TEMPLATES/$1 out=$2 text name
  shift 2
  text=$(<"$template") || die "cannot read $template"
  for name in "$@"; do
    [[ -v $name ]] || die "render $template: the variable $name is not set"
    # Quoted replacement: a value's '&' stays itself (bash 5.2's patsub_replacement).
    text=${text//"\${$name}"/"${!name}"}
  done
  if [[ $text == *'${'* ]]; then
    die "render $template: no value given for $(grep -o '\${[^}]*}' <<<"$text" | sort -u | tr '\n' ' ')"
  fi
  printf '%s\n' "$text" >"$out"
}

# Microseconds since the epoch (EPOCHREALTIME's decimal separator follows the locale), and the seconds
# elapsed since such a value $1, with one decimal.
now_us() { echo "${EPOCHREALTIME/[.,]/}"; }
since() {
  local tenths=$((($(now_us) - $1) / 100000))
  echo "$((tenths / 10)).$((tenths % 10))"
}

# Serialises up, down and restart-apiserver, e.g. when several test processes call `up` at once. The lock
# file sits beside the state directory because `down` deletes the directory. The wait is bounded (a cold
# `up` builds for ~12 min) so that a stuck holder ends in an error rather than a hung test run.
lock() {
  local file
  file=$(dirname "$STATE")/.$(basename "$STATE").lock
  mkdir -p "$(dirname "$STATE")"
  exec 9>"$file"
  flock -w 1800 9 || die "waited 30 min for $file: another cluster.sh (or a process it started) holds it"
}

# --noproxy: these requests must go to 127.0.0.1 itself, whatever proxy the environment names.
api_ready() {
  [ "$(curl -sS --noproxy '*' --max-time 2 --cacert "$PKI/ca.crt" "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" = ok ]
}
etcd_healthy() {
  curl -sS --noproxy '*' --max-time 2 "http://127.0.0.1:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'
}
default_sa_exists() {
  "$STATE/bin/kubectl" --kubeconfig="$KUBECONFIG_PATH" -n default get serviceaccount default >/dev/null 2>&1
}

# True when the process recorded for component $1 still runs and is still that component: its command line
# must equal the recorded one, so a recycled pid is never taken for ours, nor signalled.
running() {
  local pid
  pid=$(cat "$STATE/pids/$1.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [ "$(tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline")" = "$(cat "$STATE/cmd/$1.args" 2>/dev/null)" ]
}

all_running() {
  local c
  for c in "${COMPONENTS[@]}"; do running "$c" || return 1; done
}

# Starts component $1 from its recorded command line. setsid gives it a session of its own, so it outlives
# the calling shell and gets none of its terminal's signals (Ctrl-C, SIGHUP). The log is appended to, so a
# restart keeps the previous run's output. Every descriptor beyond stdio is closed first: the component must
# not inherit our lock, nor a caller's (a `flock FILE make test`), nor a CI runner's pipe, or it would hold
# them for as long as it runs.
launch() {
  local args fd
  mapfile -t args <"$STATE/cmd/$1.args"
  (
    for fd in $(ls "/proc/$BASHPID/fd"); do
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid "${args[@]}" </dev/null >>"$STATE/logs/$1.log" 2>&1
  ) &
  echo "$!" >"$STATE/pids/$1.pid"
}

# Records the command line "$2"... of component $1 (for restart-apiserver), then launches it.
start() {
  local name=$1
  shift
  printf '%s\n' "$@" >"$STATE/cmd/$name.args"
  launch "$name"
}

# SIGTERM, up to 10 s for a clean exit, then SIGKILL. Only ever signals a pid that running() vouches for.
stop() {
  local pid i
  if running "$1"; then
    pid=$(cat "$STATE/pids/$1.pid")
    log "stopping $1 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      running "$1" || break
      sleep 0.2
    done
    if running "$1"; then
      log "$1 still runs 10 s after SIGTERM: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while running "$1"; do sleep 0.1; done
    fi
  fi
  rm -f "$STATE/pids/$1.pid"
}

# Names of the processes started with `run`: every recorded command line that is not a component.
extra_processes() {
  local args name
  for args in "$STATE"/cmd/*.args; do
    [ -e "$args" ] || continue
    name=$(basename "$args" .args)
    [[ " ${COMPONENTS[*]} " == *" $name "* ]] || echo "$name"
  done
}

# The processes started against the cluster first, then the components in reverse start order; the node's
# containers are killed after kubelet stops (so that it restarts none) and before containerd does.
stop_all() {
  local i name
  for name in $(extra_processes); do stop "$name"; done
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    [ "${COMPONENTS[i]}" != containerd ] || node_kill_containers
    stop "${COMPONENTS[i]}"
  done
}

# Ends an `up` that failed: stops what it started and removes what the node set up on the machine; the
# state directory stays, for its logs.
abort_up() {
  stop_all
  node_teardown
  exit 1
}

# Polls "$3"... every 0.5 s for up to $1 seconds; gives up at once when component $2 has exited.
wait_until() {
  local deadline=$((SECONDS + $1)) component=$2
  shift 2
  until "$@"; do
    running "$component" || return 1
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.5
  done
}

# Reports why component $1 failed (message $2) with the tail of its log.
report_failure() {
  log "error: $2; last lines of $STATE/logs/$1.log:"
  tail -n 25 "$STATE/logs/$1.log" >&2 || true
}

# State directories of clusters of ours on this machine other than $STATE: the recorded one, and any whose
# node still has mounts (a cluster started before RECORD existed, or whose record /run lost).
other_states() {
  local dir
  {
    recorded_state || true
    awk '{ print $5 }' /proc/self/mountinfo | sed -n 's#^\(/.*\)/node/\(kubelet\|containerd\)\(/.*\)\{0,1\}$#\1#p'
  } | sort -u | while read -r dir; do
    [ "$dir" != "$STATE" ] && [ -e "$dir/.braid-cluster" ] && echo "$dir"
  done
}

# Stops whatever the state directory records, removes what the node made on the machine, checks that
# nothing is left, and deletes the directory. A cluster of ours with another state directory goes first:
# two cannot share the bridge and the ports, and its leftovers would otherwise block `up`.
clean_state() {
  local other
  # Not from inside one of those: two of them would each take the other down, and wait for its lock.
  [ -n "${BRAID_CLUSTER_OTHERS_DONE:-}" ] || for other in $(other_states); do
    log "a cluster with state in $other is on this machine: taking it down"
    BRAID_CLUSTER_OTHERS_DONE=1 BRAID_CLUSTER_DIR=$other bash "$HERE/cluster.sh" down ||
      die "could not take down the cluster in $other (see above)"
  done
  if [ -e "$STATE" ]; then
    if [ ! -e "$MARKER" ] && [ -n "$(ls -A "$STATE")" ]; then
      die "$STATE exists but was not made by cluster.sh (no $(basename "$MARKER")): not touching it"
    fi
    stop_all
    node_teardown
  fi
  node_remove_orphans
  node_verify_gone || die "the node's leftovers are listed above; $STATE is kept for its logs"
  rm -rf "$STATE"
  [ "$(cat "$RECORD" 2>/dev/null)" != "$STATE" ] || rm -f "$RECORD"
}

# Fails early, naming the holder, when a port is taken, e.g. by a cluster whose state directory was deleted
# by hand (its processes still run, and this script has lost their pids).
check_ports_free() {
  local port holder
  for port in "$@"; do
    holder=$(ss -Hltnp "sport = :$port")
    [ -z "$holder" ] || die "port $port is already in use: $holder"
  done
}

ossl() { openssl "$@" 2>>"$STATE/logs/openssl.log" || die "openssl $1 failed: see $STATE/logs/openssl.log"; }

# RSA key $1 (genpkey, unlike req, can be told not to print progress dots).
genkey() { ossl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1"; }

# Key $1.key and certificate $1.crt with subject $2 and the extensions in file $3, signed by the CA.
issue() {
  genkey "$1.key"
  ossl req -new -key "$1.key" -out "$1.csr" -subj "$2"
  ossl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 -extfile "$3" -out "$1.crt"
}

# A CA; the API server's serving certificate; a client certificate per identity (the CA is the API server's
# --client-ca-file, so CN is the user and O the group); the service-account signing key pair.
make_pki() (
  mkdir -p "$PKI"
  cd "$PKI"
  genkey ca.key
  ossl req -x509 -new -key ca.key -out ca.crt -days 3650 -subj /CN=braid-e2e-ca
  render apiserver.ext apiserver.ext NODE_IP
  render client.ext client.ext
  issue apiserver /CN=kube-apiserver apiserver.ext
  # system:masters is the group that RBAC never denies.
  issue admin /O=system:masters/CN=admin client.ext
  # The users that the API server's default RBAC bindings grant these components' rights to.
  issue kube-controller-manager /CN=system:kube-controller-manager client.ext
  issue kube-scheduler /CN=system:kube-scheduler client.ext
  genkey sa.key
  ossl pkey -in sa.key -pubout -out sa.pub
  node_pki
)

# Kubeconfig $1 for the client certificate $PKI/$2.{crt,key}, with everything embedded so that it stands alone.
write_kubeconfig() {
  local USER_NAME=$2 CA_DATA CERT_DATA KEY_DATA
  CA_DATA=$(base64 -w0 "$PKI/ca.crt")
  CERT_DATA=$(base64 -w0 "$PKI/$2.crt")
  KEY_DATA=$(base64 -w0 "$PKI/$2.key")
  render kubeconfig "$1" USER_NAME API_PORT CA_DATA CERT_DATA KEY_DATA
}

cmd_up() {
  local t0 tools c
  t0=$(now_us)
  need curl curl
  need openssl openssl
  need ss iproute2
  node_check_deps
  lock
  if [ -e "$MARKER" ]; then
    if api_ready && all_running; then
      # A cluster started before the Gateway API CRDs were part of it gets them now (a no-op otherwise).
      "$HERE/gateway-api.sh" apply "$KUBECONFIG_PATH"
      log "already up (checked in $(since "$t0") s)"
      echo "$KUBECONFIG_PATH"
      return
    fi
    log "the cluster in $STATE is not healthy: replacing it"
  fi
  clean_state
  # Before a build that may take 15 min.
  check_ports_free "$API_PORT" "$ETCD_PORT" "$ETCD_PEER_PORT" "$REGISTRY_PORT" 10250 "$KUBELET_HEALTHZ_PORT" \
    "$KUBE_PROXY_HEALTHZ_PORT" "$KUBE_PROXY_METRICS_PORT" "$COREDNS_READY_PORT"
  node_check_network
  # What the cluster runs; the tests that use Prometheus or Jaeger build them into the same directory.
  tools=$("$HERE/build-tools.sh" --cluster | tail -n 1)

  mkdir -p "$STATE"/{logs,pids,cmd}
  touch "$MARKER"
  { echo "$STATE" >"$RECORD"; } 2>/dev/null ||
    log "cannot write $RECORD: 'cluster.sh down' finds this cluster only through BRAID_CLUSTER_DIR=$STATE or its mounts"
  ln -s "$tools" "$STATE/bin"
  make_pki
  node_network

  # --unsafe-no-fsync: the data is thrown away with the cluster, and fsync dominates etcd's latency.
  start etcd "$STATE/bin/etcd" --name=braid-e2e --data-dir="$STATE/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="braid-e2e=http://127.0.0.1:$ETCD_PEER_PORT" \
    --unsafe-no-fsync --log-level=warn
  if ! wait_until 30 etcd etcd_healthy; then
    report_failure etcd "etcd did not become healthy within 30 s"
    abort_up
  fi

  # The default admission plugins stay on: they include MutatingAdmissionWebhook and ValidatingAdmissionWebhook,
  # and ServiceAccount, which kube-controller-manager's default ServiceAccounts satisfy.
  # --bind-address=0.0.0.0: pods reach the API server through the "kubernetes" Service, whose endpoint is
  #   --advertise-address, the node's bridge address; BRAID-NODE-INPUT (node.sh) refuses it on any
  #   interface but loopback and the bridge. The advertise address must be given anyway: without it the
  #   API server looks for a default route, which sandboxes may lack.
  # --service-account-*: required for TokenRequest (`kubectl create token`, projected tokens) and TokenReview.
  #   The API audience defaults to the issuer, so a TokenReview of a token made for another audience
  #   (`kubectl create token --audience braid`) must name that audience in spec.audiences.
  # --enable-aggregator-routing: webhooks and aggregated APIs given as a Service are dialled at an endpoint
  #   address of the Service rather than its ClusterIP: the API server then works without kube-proxy's
  #   rules, and a webhook in a test's own network namespace (not a pod) can be reached.
  # --kubelet-*: logs, exec and port-forward go to the kubelet at its InternalIP, whose serving certificate
  #   the cluster CA signed, with a client certificate that the kubelet's webhook authorizer accepts.
  # NodeRestriction: a kubelet may change only its own Node and the pods bound to it.
  # --shutdown-send-retry-after: on SIGTERM, drain in-flight requests, then give open connections (watches)
  #   2 s after GOAWAY instead of the 60 s request timeout, so restart-apiserver and down need no SIGKILL.
  start kube-apiserver "$STATE/bin/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port="$API_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --enable-aggregator-routing=true \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --shutdown-send-retry-after=true \
    --allow-privileged=true --profiling=false
  if ! wait_until 90 kube-apiserver api_ready; then
    report_failure kube-apiserver "kube-apiserver did not answer /readyz within 90 s"
    abort_up
  fi

  write_kubeconfig "$KUBECONFIG_PATH" admin
  write_kubeconfig "$PKI/kube-controller-manager.kubeconfig" kube-controller-manager
  write_kubeconfig "$PKI/kube-scheduler.kubeconfig" kube-scheduler

  # --secure-port=0: no health endpoint, and so no port that could clash; `up` checks that they run, and
  #   kube-controller-manager by its work.
  # --leader-elect=false: one instance needs no election, and an elected one exits when it cannot renew its
  #   lease for 10 s, so restart-apiserver would kill it.
  # --use-service-account-credentials: each controller acts as its own ServiceAccount, so Pods made by the
  #   ReplicaSet controller reach the webhook as system:serviceaccount:kube-system:replicaset-controller.
  # --flex-volume-plugin-dir: the default, /usr/libexec/kubernetes/..., would be created outside the state dir.
  start kube-controller-manager "$STATE/bin/kube-controller-manager" \
    --kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
    --secure-port=0 --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/sa.key" \
    --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --flex-volume-plugin-dir="$STATE/flexvolume"
  start kube-scheduler "$STATE/bin/kube-scheduler" \
    --kubeconfig="$PKI/kube-scheduler.kubeconfig" \
    --secure-port=0 --leader-elect=false

  # The ServiceAccount admission plugin rejects Pods until their namespace's "default" ServiceAccount exists.
  if ! wait_until 60 kube-controller-manager default_sa_exists; then
    report_failure kube-controller-manager "no serviceaccount/default in namespace default within 60 s"
    abort_up
  fi
  node_up
  for c in "${COMPONENTS[@]}"; do
    if ! running "$c"; then
      report_failure "$c" "$c exited"
      abort_up
    fi
  done
  # The Gateway API's CRDs, as a cluster of a platform that offers them: Braid routes HTTPRoutes and
  # GRPCRoutes whose parent is a Service (docs/gateway-api.md).
  if ! "$HERE/gateway-api.sh" apply "$KUBECONFIG_PATH"; then
    report_failure kube-apiserver "the Gateway API CRDs could not be installed"
    abort_up
  fi
  log "up in $(since "$t0") s: https://127.0.0.1:$API_PORT, state in $STATE"
  echo "$KUBECONFIG_PATH"
}

cmd_down() {
  lock
  clean_state
  log "down"
}

cmd_status() {
  local c
  need curl curl
  for c in "${COMPONENTS[@]}"; do
    if running "$c"; then echo "$c: running, pid $(cat "$STATE/pids/$c.pid")"; else echo "$c: not running"; fi
  done
  if api_ready; then
    echo "up: https://127.0.0.1:$API_PORT/readyz is ok; kubeconfig $KUBECONFIG_PATH"
  else
    echo "not up: https://127.0.0.1:$API_PORT/readyz does not answer ok"
    return 1
  fi
}

cmd_restart_apiserver() {
  local t0
  t0=$(now_us)
  need curl curl
  lock
  if [ ! -e "$MARKER" ] || [ ! -f "$STATE/cmd/kube-apiserver.args" ]; then
    die "no cluster in $STATE: run 'cluster.sh up' first"
  fi
  stop kube-apiserver
  launch kube-apiserver
  if ! wait_until 90 kube-apiserver api_ready; then
    report_failure kube-apiserver "kube-apiserver did not answer /readyz within 90 s of its restart"
    exit 1
  fi
  log "kube-apiserver restarted in $(since "$t0") s"
}

cmd_kubeconfig() {
  need curl curl
  api_ready || die "the cluster is not up: run 'cluster.sh up'"
  echo "$KUBECONFIG_PATH"
}

cmd_ctr() {
  running containerd || die "the node's containerd is not running: run 'cluster.sh up' first"
  # ctr pulls in its own process: the node's registry is never reached through a proxy.
  NO_PROXY=$NODE_IP${NO_PROXY:+,$NO_PROXY} no_proxy=$NODE_IP${no_proxy:+,$no_proxy} \
    exec ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"
}

cmd_registry() {
  running registry && registry_ready || die "the node's registry is not running: run 'cluster.sh up' first"
  printf '%s\n' "$REGISTRY" "$PKI/ca.crt" "$STATE/bin/crane" "$NODE/containerd/certs.d"
}

cmd_run() {
  local name=${1:-}
  if ! [[ $name =~ ^[a-z][-a-z0-9]*$ ]] || [ $# -lt 2 ]; then die "usage: cluster.sh run NAME CMD [ARG...]"; fi
  shift
  [[ " ${COMPONENTS[*]} " != *" $name "* ]] || die "$name is a cluster component; use restart-apiserver"
  api_ready || die "the cluster is not up: run 'cluster.sh up' first"
  lock
  stop "$name"
  start "$name" "$@"
  log "$name started (pid $(cat "$STATE/pids/$name.pid")), log $STATE/logs/$name.log"
}

case ${1:-} in
up) cmd_up ;;
run)
  shift
  cmd_run "$@"
  ;;
down) cmd_down ;;
status) cmd_status ;;
restart-apiserver) cmd_restart_apiserver ;;
kubeconfig) cmd_kubeconfig ;;
registry) cmd_registry ;;
ctr)
  shift
  cmd_ctr "$@"
  ;;
help | -h | --help) usage ;;
*)
  usage >&2
  exit 2
  ;;
esac
