#!/usr/bin/env bash
# Runs COMMAND (`make test`'s cluster phase) while what its later steps use is built beside it at the
# lowest CPU priority, in this order: the e2e test binaries (as `make integration` builds them, which
# waits for them while the new cluster runs its first checks), Prometheus and Jaeger (the prometheus
# and tracing tests), the previous release's images (the upgrade test), and the Gateway API
# conformance suite (run last).
#
# Why: on a cold machine everything before the cluster starts (the Kubernetes binaries, lint and unit
# tests, the images) keeps both cores busy, while the end-to-end tests mostly wait on the cluster.
# Built here, these take their quarter of an hour of a cold run from the cores the tests leave idle.
# Warm, all are cached and this costs a few seconds of checks.
#
# A step that needs one before it is ready waits for it (cargo, build-tools.sh, previous-release.sh
# and conformance.sh take a lock); if the background build failed, that step builds it again in the
# foreground and shows the error. Whatever is still running when COMMAND ends is stopped. Exits with
# COMMAND's status.
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
previous=$(bash "$ROOT/e2e/upgrade/previous-release.sh" version)

# Its own session and process group, so that stopping it stops cargo, rustc and go too.
setsid nice -n 19 bash -c '
  set -e
  cd "$1"
  ${CARGO:-cargo} build --workspace --bins --locked
  ${CARGO:-cargo} test -p braid-e2e --locked --no-run
  bash "$1/e2e/cluster/build-tools.sh" prometheus >/dev/null
  bash "$1/e2e/cluster/build-tools.sh" jaeger >/dev/null
  bash "$1/e2e/upgrade/previous-release.sh" build
  bash "$1/e2e/conformance/conformance.sh" build
  echo "ready in $SECONDS s"' bash "$ROOT" >"$LOG" 2>&1 </dev/null &
builds=$!
stop() { kill -TERM -- "-$builds" 2>/dev/null; }
# Not finished (a finished one stays a zombie, which kill -0 still finds, until it is waited for).
running() {
  local state
  state=$(cut -d ' ' -f 3 "/proc/$builds/stat" 2>/dev/null) && [ "$state" != Z ]
}
trap 'stop; exit 130' INT TERM
echo "background: building the e2e tests, Prometheus, Jaeger, release $previous's images and the conformance suite beside the tests (nice 19; log: $LOG)" >&2

"$@"
status=$?

if running; then
  echo "background: the builds were still running when the tests ended; stopped (log: $LOG)" >&2
  stop
  wait "$builds"
elif ! wait "$builds"; then
  echo "background: the builds failed (the tests that needed them built again); the end of $LOG:" >&2
  tail -n 20 "$LOG" >&2
else
  echo "background: the e2e tests, Prometheus, Jaeger, release $previous's images and the conformance suite $(tail -n 1 "$LOG")" >&2
fi
exit $status
