#!/usr/bin/env bash
# Runs COMMAND (`make test`'s cluster phase) while what its later steps use is built beside it at the
# lowest CPU priority, in this order (each when its consumer needs it):
#   the e2e test binaries      `make integration` builds them too, and waits for these while the new
#                              cluster runs its first checks
#   Prometheus                 the prometheus test
#   the unit tests, clippy     `make test` runs lint and unit after the cluster phase (these compile
#                              them; cargo's lock on target/ is free by then, once `make integration`
#                              has built the images)
#   Jaeger                     the tracing test
#   the previous release       the upgrade test (its images, in their own target directory)
#   the conformance suite      run last
#
# Why: on a cold machine the builds before the cluster starts (the Kubernetes binaries, both image
# profiles) keep both cores busy, while the end-to-end tests mostly wait on the cluster. Built here,
# these take about half an hour of CPU from the cores the tests leave idle. Warm, all are cached and
# this costs a few seconds of checks.
#
# Each step runs whether or not the one before it failed. A consumer that needs a build before it is
# ready waits for it (cargo, build-tools.sh, previous-release.sh and conformance.sh take a lock); one
# whose build failed here builds it again itself and shows the error. Whatever is still running when
# COMMAND ends is stopped. Exits with COMMAND's status.
#
# Usage: e2e/with-background-builds.sh COMMAND [ARG...]
# Environment: BRAID_BACKGROUND_LOG  where the builds' output goes
#              (default ${XDG_CACHE_HOME:-~/.cache}/braid/background-builds.log)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOG=${BRAID_BACKGROUND_LOG:-${XDG_CACHE_HOME:-$HOME/.cache}/braid/background-builds.log}
[ $# -gt 0 ] || {
  echo "usage: e2e/with-background-builds.sh COMMAND [ARG...]" >&2
  exit 2
}
mkdir -p "$(dirname "$LOG")"

# Its own session and process group, so that stopping it stops cargo, rustc and go too.
setsid nice -n 19 bash -c '
  cd "$1"
  failed=()
  step() {
    local name=$1 t0=$SECONDS
    shift
    echo "== $name"
    if "$@"; then echo "== $name: done in $((SECONDS - t0)) s"; else failed+=("$name"); fi
  }
  make() { command make --no-print-directory "$@"; }
  step "the e2e tests" make build e2e-build
  step Prometheus bash e2e/cluster/build-tools.sh prometheus
  step "the unit tests" make unit-build
  step clippy make lint
  step Jaeger bash e2e/cluster/build-tools.sh jaeger
  step "the previous release" bash e2e/upgrade/previous-release.sh build
  step "the conformance suite" bash e2e/conformance/conformance.sh build
  if [ ${#failed[@]} -eq 0 ]; then echo "ready in $SECONDS s"; else echo "failed: ${failed[*]}"; exit 1; fi
' bash "$ROOT" >"$LOG" 2>&1 </dev/null &
builds=$!
stop() { kill -TERM -- "-$builds" 2>/dev/null; }
# Not finished (a finished one stays a zombie, which kill -0 still finds, until it is waited for).
running() {
  local state
  state=$(cut -d ' ' -f 3 "/proc/$builds/stat" 2>/dev/null) && [ "$state" != Z ]
}
trap 'stop; exit 130' INT TERM
echo "background: building the e2e tests, Prometheus, the unit tests, clippy's checks, Jaeger, the previous release and the conformance suite beside the tests (nice 19; log: $LOG)" >&2

"$@"
status=$?

if running; then
  echo "background: still building when the tests ended, at: $(grep '^== ' "$LOG" | tail -n 1); stopped (log: $LOG)" >&2
  stop
  wait "$builds"
elif ! wait "$builds"; then
  echo "background: $(tail -n 1 "$LOG") (whatever needed it built it again); the log is $LOG" >&2
else
  echo "background: every build $(tail -n 1 "$LOG")" >&2
fi
exit $status
