#!/usr/bin/env bash
# Discovery at scale: PROXIES simulated proxies (all in one driver process), in-process clients of
# the real discovery server (operator/src/discovery/server.rs) over HTTP/2 + mTLS, on a synthetic
# index of PODS pods and SERVICES Services. Every proxy subscribes to a Service all proxies call,
# one of 10 Services a tenth of them call, one of 100 a hundredth call, and two at random. The
# change phase cycles MeshRoute changes over those three classes and measures how long each takes
# to reach every subscribed proxy and to be acked, and the server's CPU per change; then ROLLOUTS
# canary rollouts at once, run by the operator's rollout code on what the proxies report: how long
# each weight step takes to reach every proxy, the server's CPU per interval and its memory.
# The driver and the proxies run in operator/examples/discovery_scale (driver mode) pinned to
# CPU 0; it starts the server (the same binary, server mode) pinned to CPU 1, so the server has
# one core, as an operator with a 1-CPU limit would.
#
# Writes bench/results/discovery-<UTC timestamp>.md (also printed): figures, PASS/MISS per target
# (set for 10,000 proxies: p99 propagation under 1 s for a change every proxy gets and under 50 ms
# for one 1% get, operator CPU per change following the fan-out, operator RSS under 512 MiB), and
# the machine's other load. Exits 0 whether or not the targets are met, like the other benchmarks.
#
# Knobs: PROXIES (10000), PODS (12000, at least PROXIES), SERVICES (2000), ROUTES (300, at least
# 111), CHANGES (30, cycling over the 100%, 10% and 1% classes), SPACING_MS (1000, between the
# starts of two changes), HANDSHAKES (32, TLS handshakes in flight while connecting), ROLLOUTS
# (100; 0 skips the phase), ROLLOUT_INTERVAL (3s, each rollout's spec.canary.interval), PIN (1; 0
# lets both processes use every CPU), NICE (0), BIN (a discovery_scale binary to use instead of
# building it).
#
# Every proxy holds one socket in the driver and one in the server, so each of the two processes
# needs PROXIES open files and some: the limit is raised (ulimit -n 65536, or the hard limit when
# that is lower) and checked.
set -euo pipefail
cd "$(dirname "$0")/.."

PROXIES=${PROXIES:-10000}
PODS=${PODS:-$((PROXIES > 10000 ? PROXIES * 6 / 5 : 12000))}
SERVICES=${SERVICES:-2000}
ROUTES=${ROUTES:-300}
CHANGES=${CHANGES:-30}
SPACING_MS=${SPACING_MS:-1000}
HANDSHAKES=${HANDSHAKES:-32}
ROLLOUTS=${ROLLOUTS:-100}
ROLLOUT_INTERVAL=${ROLLOUT_INTERVAL:-3s}
PIN=${PIN:-1}
NICE=${NICE:-0}
BIN=${BIN:-target/release/examples/discovery_scale}

log() { echo "bench: $*" >&2; }

if [ "$BIN" = target/release/examples/discovery_scale ]; then
  log "building the discovery_scale example (release)"
  cargo build --release --locked -q -p braid-operator --example discovery_scale
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
log "open files limit: $(ulimit -n) per process"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((PROXIES + 256)) ]; then
  log "the open-files limit $(ulimit -n) is too low for $PROXIES proxies (each process needs about $((PROXIES + 256)))"
  exit 1
fi
if [ "$PODS" -lt "$PROXIES" ]; then
  log "PODS ($PODS) must be at least PROXIES ($PROXIES): each proxy speaks for its own pod"
  exit 1
fi

if pgrep -x rustc >/dev/null; then
  log "note: rustc is running (another build): the figures will carry that load; the report says how much"
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=bench/results/discovery-$stamp.md
mkdir -p bench/results
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- operator proxy 2>/dev/null || commit="$commit+uncommitted changes"
label="commit $commit · $(nproc) CPUs · $(date -u +'%Y-%m-%d %H:%M UTC')"

pin_driver=()
pin_server=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  pin_driver=(taskset -c 0)
  pin_server=(--server-cpus 1)
  label="$label · driver on CPU 0, server on CPU 1"
fi

nice -n "$NICE" "${pin_driver[@]}" "$BIN" drive \
  --proxies "$PROXIES" --pods "$PODS" --services "$SERVICES" --routes "$ROUTES" \
  --changes "$CHANGES" --spacing-ms "$SPACING_MS" --connect-concurrency "$HANDSHAKES" \
  --rollouts "$ROLLOUTS" --rollout-interval "$ROLLOUT_INTERVAL" "${pin_server[@]}" \
  --label "$label" --out "$out" >/dev/null

cat "$out"
log "results: $out"
