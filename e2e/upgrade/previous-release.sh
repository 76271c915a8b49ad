#!/usr/bin/env bash
# The previous release of Braid, for the upgrade test (e2e/tests/upgrade.rs): its sources at the commit
# it was released from, its images built by its own images/build.sh and its chart packaged by its own
# helm/publish.sh, exactly as a user who installed that release got them.
#
# Usage: e2e/upgrade/previous-release.sh version        the previous release's chart version
#        e2e/upgrade/previous-release.sh build          its image archives (cached per release; no cluster)
#        e2e/upgrade/previous-release.sh publish REPO   its images (tagged with its version) and its chart
#                                                       pushed to REPO and oci://REPO/charts, as `make push`
#                                                       and `make chart` of that release do
# Environment:
#   REGISTRY_CA       a CA certificate file to trust for REPO
#   BRAID_PREVIOUS_DIR where the sources, their cargo target directory and image archives are kept
#                     (default ${XDG_CACHE_HOME:-~/.cache}/braid/previous-release)
#
# The release's sources come from this clone's history, so a shallow clone cannot build them (it is
# told how to fetch them). They build in their own cargo target directory: two checkouts of one
# workspace in one target directory would take each other's binaries for fresh.
set -euo pipefail

# The release before the one this checkout is: bump both when a release is cut.
PREVIOUS_VERSION=0.1.0
PREVIOUS_COMMIT=aaf441aca1a667bd5810295d3b14d3604523788c

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=${BRAID_PREVIOUS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/braid/previous-release}/$PREVIOUS_VERSION-${PREVIOUS_COMMIT:0:12}
SRC=$DIR/src

log() { printf 'previous-release: %s\n' "$*" >&2; }
die() {
  printf 'previous-release: %s\n' "$*" >&2
  exit 1
}

# shellcheck source=e2e/cluster/lock.sh
. "$ROOT/e2e/cluster/lock.sh"

# The release's sources in $SRC, a clone of this repository checked out at the release commit (a clone,
# not an export: the images' revision label is read from git).
sources() {
  if [ "$(git -C "$SRC" rev-parse HEAD 2>/dev/null)" = "$PREVIOUS_COMMIT" ] &&
    [ -z "$(git -C "$SRC" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    return
  fi
  git -C "$ROOT" cat-file -e "$PREVIOUS_COMMIT^{commit}" 2>/dev/null ||
    die "release $PREVIOUS_VERSION's commit $PREVIOUS_COMMIT is not in this clone (a shallow one?): fetch the history with 'git fetch --unshallow' and run again"
  rm -rf "$SRC"
  mkdir -p "$DIR"
  git clone --quiet --no-checkout "$ROOT" "$SRC"
  git -C "$SRC" -c advice.detachedHead=false checkout --quiet "$PREVIOUS_COMMIT"
  log "release $PREVIOUS_VERSION: sources at ${PREVIOUS_COMMIT:0:12} in $SRC"
}

# One build of the release at a time: `make test` builds it beside the e2e tests, and the upgrade test
# publishes it (which builds what is missing) when it gets there. The lock is held until this script
# exits; a second run waits for the first, then finds its archives cached.
lock() {
  mkdir -p "$DIR"
  lock_or_wait "$DIR.lock" "another build of release $PREVIOUS_VERSION"
}

# Its own build script, its own target directory and archive cache; what it prints goes to stderr
# (stdout is the version `publish` answers with).
release_build() {
  CARGO_TARGET_DIR=$DIR/target BRAID_IMAGES_DIR=$DIR/images bash "$SRC/images/build.sh" "$@" \
    braid-proxy braid-operator braid-webhook >&2
}

case ${1:-} in
version) echo "$PREVIOUS_VERSION" ;;
build)
  lock
  sources
  t0=$SECONDS
  release_build --no-push
  log "release $PREVIOUS_VERSION: image archives ready in $((SECONDS - t0)) s"
  ;;
publish)
  [ $# -eq 2 ] || die "usage: previous-release.sh publish REPO"
  lock
  sources
  release_build --push-to "$2"
  version=$(REGISTRY_CA=${REGISTRY_CA:-} bash "$SRC/helm/publish.sh" "$2" | tail -n 1)
  [[ $version == *"--version $PREVIOUS_VERSION "* ]] ||
    die "release $PREVIOUS_VERSION's helm/publish.sh published another version: $version"
  echo "$PREVIOUS_VERSION"
  ;;
*) die "usage: previous-release.sh version | build | publish REPO" ;;
esac
