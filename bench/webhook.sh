#!/usr/bin/env bash
# Admission benchmark of braid-webhook: 50 concurrent TLS clients POST the golden
# AdmissionReview of a plain pod to /inject, on the local cluster (the webhook reads namespace
# labels and the Mesh from it). Closed loop for the throughput, then paced at a fixed rate with
# coordinated-omission correction for the latency; 5 runs each, medians reported. The load
# generator is pinned to core 0 and the webhook to core 1. VmRSS is sampled idle and under load.
# Writes bench/results/webhook-TIMESTAMP.json and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-15}
PACED_RATE=${PACED_RATE:-1000}
CLIENTS=50
TOOLS=${XDG_CACHE_HOME:-$HOME/.cache}/braid/cargo-tools
OHA=$(command -v oha || echo "$TOOLS/bin/oha")
if [ ! -x "$OHA" ]; then
  echo "bench: installing oha (load generator with coordinated-omission correction) from crates.io" >&2
  cargo install oha --locked --root "$TOOLS" >&2
fi

KUBECONFIG=$(bash e2e/cluster/cluster.sh up | tail -n 1)
export KUBECONFIG
kubectl() { "$(dirname "$KUBECONFIG")/bin/kubectl" "$@"; }
cargo build --release --locked -q -p braid-webhook

work=$(mktemp -d)
cleanup() {
  if [ -n "${webhook_pid:-}" ]; then kill "$webhook_pid" 2>/dev/null || true; fi
  kubectl delete namespace meshed --ignore-not-found --wait=false >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# The review names namespace "meshed": make it exist, labelled, so no request waits on the API.
kubectl create namespace meshed --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace meshed braid.dev/inject=enabled --overwrite >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
taskset -c 1 target/release/braid-webhook serve --addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$admin" \
  --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --log warn >"$work/webhook.log" 2>&1 &
webhook_pid=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "http://127.0.0.1:$admin/readyz" >/dev/null || { cat "$work/webhook.log" >&2; exit 1; }

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$webhook_pid/status"; }
idle_rss=$(rss_kib)

# One oha run; prints its JSON summary. $1.. extra flags.
load() {
  taskset -c 0 "$OHA" --no-tui --output-format json --insecure -w -c "$CLIENTS" -z "${SECONDS_PER_RUN}s" \
    -m POST -T application/json -D webhook/tests/golden/plain-pod.review.json "$@" \
    "https://127.0.0.1:$port/inject"
}

peak_rss=$idle_rss
results=()
for mode in closed paced; do
  for run in $(seq "$RUNS"); do
    if [ "$mode" = closed ]; then flags=(); else flags=(-q "$PACED_RATE" --latency-correction); fi
    load "${flags[@]}" >"$work/$mode-$run.json" &
    oha_pid=$!
    while kill -0 "$oha_pid" 2>/dev/null; do
      rss=$(rss_kib)
      [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
      sleep 0.5
    done
    wait "$oha_pid"
    results+=("$work/$mode-$run.json")
  done
done

mkdir -p bench/results
out=bench/results/webhook-$(date -u +%Y%m%dT%H%M%SZ).json
python3 - "$out" "$idle_rss" "$peak_rss" "$CLIENTS" "$PACED_RATE" "${results[@]}" <<'PY'
import json, statistics, sys, os
out, idle, peak, clients, rate, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
runs = {"closed": [], "paced": []}
for f in files:
    mode = os.path.basename(f).split("-")[0]
    d = json.load(open(f))
    p = d["latencyPercentiles"]
    codes = d.get("statusCodeDistribution", {})
    runs[mode].append({"rps": d["summary"]["requestsPerSec"], "p50_ms": p["p50"] * 1000, "p99_ms": p["p99"] * 1000,
                       "p999_ms": p["p99.9"] * 1000, "ok": codes.get("200", 0),
                       "errors": sum(v for k, v in codes.items() if k != "200") + sum(d.get("errorDistribution", {}).values())})
summary = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
report = {"clients": clients, "paced_rate": rate, "idle_vmrss_kib": idle, "peak_vmrss_kib": peak, "median": summary, "runs": runs}
json.dump(report, open(out, "w"), indent=2)
c, q = summary["closed"], summary["paced"]
print(f"braid-webhook admission, {clients} TLS clients, medians of {len(runs['closed'])} runs ({out})")
print(f"  closed loop : {c['rps']:8.0f} req/s   p50 {c['p50_ms']:.2f} ms   p99 {c['p99_ms']:.2f} ms   errors {c['errors']:.0f}")
print(f"  {rate}/s paced: p50 {q['p50_ms']:.2f} ms   p99 {q['p99_ms']:.2f} ms   p99.9 {q['p999_ms']:.2f} ms   errors {q['errors']:.0f}")
print(f"  VmRSS idle {idle/1024:.1f} MiB, peak under load {peak/1024:.1f} MiB")
PY
