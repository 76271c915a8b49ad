#!/usr/bin/env bash
# The Gateway API conformance suite's mesh profiles (MESH-HTTP, MESH-GRPC) against Braid on the local
# cluster, at the release e2e/tools/gateway-api/go.mod pins.
#
#   conformance.sh build    build the suite (a Go test binary), echo-basic (from the gateway-api module)
#                           and Istio's echo server and client (the echo-advanced image the mesh tests
#                           exec into; e2e/tools/istio-echo pins them) into the tools cache, when the
#                           pinned modules changed (`make test` runs it beside the e2e tests)
#   conformance.sh images   make them images under the names the suite's manifests use and import them
#                           into the node's containerd (their registries are not reachable from here, and
#                           the node's registry mirrors braid.dev only)
#   conformance.sh run      run the suite against the cluster (Braid installed, e.g. by Helm), with the
#                           test namespaces labelled for injection; the report goes to
#                           $BRAID_CONFORMANCE_REPORT (default: target/conformance/report.yaml)
#   conformance.sh check    what `make test` runs: build (when the pinned modules changed), images,
#                           Braid installed by Helm from the images in the node's registry, run, the report's summary,
#                           Braid uninstalled; fails when a test of the profiles fails
#
# Environment: KUBECONFIG (default: the local cluster's), BRAID_TOOLS_DIR as for build-tools.sh.
set -euo pipefail
umask 022

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLS=$ROOT/e2e/tools

log() { printf 'conformance: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# shellcheck source=e2e/cluster/go-env.sh
. "$ROOT/e2e/cluster/go-env.sh"
# shellcheck source=e2e/cluster/lock.sh
. "$ROOT/e2e/cluster/lock.sh"
export CGO_ENABLED=0

VERSION=$(cd "$TOOLS/gateway-api" && go list -mod=readonly -m -f '{{.Version}}' sigs.k8s.io/gateway-api)
# Its own folder, apart from the Gateway API's CRDs (e2e/cluster/gateway-api.sh).
OUT=${BRAID_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/braid/tools}/gateway-api-conformance-$VERSION
mkdir -p "$OUT"

# The image names and tags the suite's manifests (base/ and mesh/ of the conformance module) use.
manifest_images() {
  local dir
  dir=$(cd "$TOOLS/gateway-api" && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)
  grep -ho 'image: registry.k8s.io/gateway-api/[a-z-]*:[^ ]*' "$dir"/base/manifests.yaml "$dir"/mesh/manifests.yaml |
    sed 's/^image: //' | sort -u
}

# What the binaries were built from: both pinned module lists.
build_stamp() {
  cat "$TOOLS/gateway-api/go.sum" "$TOOLS/istio-echo/go.sum" | sha256sum | cut -d' ' -f1
}

# Builds when the pinned modules changed. One build at a time: a second run waits for the first (the
# lock is held until the script exits), then finds the binaries built.
cmd_build() {
  local t0=$SECONDS istio
  lock_or_wait "$OUT/.build.lock" "another build of the suite"
  [ "$(cat "$OUT/.built" 2>/dev/null)" != "$(build_stamp)" ] || return 0
  log "building the suite, echo-basic and Istio's echo app into $OUT ..."
  (cd "$TOOLS/gateway-api" &&
    go test -c -mod=readonly -trimpath -o "$OUT/conformance.test" sigs.k8s.io/gateway-api/conformance &&
    go build -mod=readonly -trimpath -ldflags='-s -w' -o "$OUT/echo-basic" sigs.k8s.io/gateway-api/conformance/echo-basic)
  (cd "$TOOLS/istio-echo" &&
    go build -mod=readonly -trimpath -ldflags='-s -w' -o "$OUT/" \
      istio.io/istio/pkg/test/echo/cmd/server istio.io/istio/pkg/test/echo/cmd/client)
  # The echo server's TLS port serves Istio's test certificate, as the upstream image does.
  istio=$(cd "$TOOLS/istio-echo" && go list -mod=readonly -m -f '{{.Dir}}' istio.io/istio)
  install -m 0644 "$istio/tests/testdata/certs/dns/cert-chain.pem" "$OUT/echo-cert.crt"
  install -m 0644 "$istio/tests/testdata/certs/dns/key.pem" "$OUT/echo-cert.key"
  build_stamp >"$OUT/.built"
  log "built in $((SECONDS - t0)) s"
}

# One-layer OCI archive $2 of root filesystem $1, tagged $3, with entrypoint $4.
archive() {
  local rootfs=$1 tar=$2 tag=$3 entrypoint=$4 scratch layout
  scratch=$(mktemp -d)
  # umoci creates the layout directory itself and refuses one that exists.
  layout=$scratch/layout
  umoci init --layout "$layout" >/dev/null
  umoci new --image "$layout:$tag" >/dev/null
  umoci insert --image "$layout:$tag" "$rootfs" / >/dev/null
  umoci config --image "$layout:$tag" --config.entrypoint "$entrypoint" --config.workingdir / \
    --config.env PATH=/usr/local/bin:/usr/bin:/bin >/dev/null
  umoci gc --layout "$layout" >/dev/null
  tar -C "$layout" -cf "$tar" .
  rm -rf "$scratch"
}

cmd_images() {
  command -v umoci >/dev/null || die "umoci is missing: apt-get install umoci"
  local image name tag work
  for image in $(manifest_images); do
    name=${image%%:*}
    tag=${image##*:}
    work=$(mktemp -d)
    mkdir -p "$work/rootfs/usr/local/bin" "$work/rootfs/tmp"
    chmod 1777 "$work/rootfs/tmp"
    case ${name##*/} in
    echo-basic)
      [ -x "$OUT/echo-basic" ] || die "run: conformance.sh build"
      install -m 0755 "$OUT/echo-basic" "$work/rootfs/echo-basic"
      archive "$work/rootfs" "$work/image.tar" "$tag" /echo-basic
      ;;
    echo-advanced)
      [ -x "$OUT/server" ] || die "run: conformance.sh build"
      install -m 0755 "$OUT/server" "$OUT/client" "$work/rootfs/usr/local/bin/"
      install -m 0644 "$OUT/echo-cert.crt" "$work/rootfs/cert.crt"
      install -m 0644 "$OUT/echo-cert.key" "$work/rootfs/cert.key"
      archive "$work/rootfs" "$work/image.tar" "$tag" /usr/local/bin/server
      ;;
    *) die "no recipe for image $image" ;;
    esac
    bash "$ROOT/e2e/cluster/cluster.sh" ctr images import --base-name "$name" "$work/image.tar" >/dev/null
    log "imported $image"
    rm -rf "$work"
  done
}

# Features Braid claims beyond the profiles' core (docs/gateway-api.md says what each field does).
FEATURES=Mesh,HTTPRoute,GRPCRoute,HTTPRouteResponseHeaderModification,HTTPRouteParentRefPort,MeshClusterIPMatching,MeshHTTPRouteQueryParamMatching,MeshHTTPRouteNamedRouteRule,MeshHTTPRouteRewritePath,MeshHTTPRouteSchemeRedirect,MeshHTTPRouteRedirectPort,MeshHTTPRouteRedirectPath,MeshConsumerRoute,HTTPRoute303RedirectStatusCode,HTTPRoute307RedirectStatusCode,HTTPRoute308RedirectStatusCode

cmd_run() {
  local report=${BRAID_CONFORMANCE_REPORT:-$ROOT/target/conformance/report.yaml}
  if [ -z "${KUBECONFIG:-}" ]; then
    KUBECONFIG=$(bash "$ROOT/e2e/cluster/cluster.sh" kubeconfig) || die "the local cluster is not up: make cluster-up"
    export KUBECONFIG
  fi
  [ -x "$OUT/conformance.test" ] || die "run: conformance.sh build"
  mkdir -p "$(dirname "$report")"
  # The suite reads its manifests relative to its own package directory.
  cd "$(cd "$TOOLS/gateway-api" && go list -mod=readonly -m -f '{{.Dir}}' sigs.k8s.io/gateway-api/conformance)"
  "$OUT/conformance.test" -test.run TestConformance -test.v -test.timeout 40m \
    --conformance-profiles=MESH-HTTP,MESH-GRPC \
    --supported-features="$FEATURES" \
    --namespace-labels=braid.dev/inject=enabled \
    --organization=braid --project=braid --url=https://braid.dev --version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$ROOT/helm/braid/Chart.yaml")" \
    --contact=braid-maintainers \
    --report-output="$report" "$@"
}

# The summary of a report: each profile's results, features and failed tests.
summarize() {
  sed -n '/^profiles:/,$p' "$1"
}

cmd_check() {
  local t0=$SECONDS report=${BRAID_CONFORMANCE_REPORT:-$ROOT/target/conformance/report.yaml} status=0
  # The cluster's own kubeconfig and tools, wherever its state directory is.
  local kubeconfig state
  kubeconfig=$(bash "$ROOT/e2e/cluster/cluster.sh" kubeconfig) || die "the local cluster is not up: make cluster-up"
  state=$(dirname "$kubeconfig")
  export KUBECONFIG=${KUBECONFIG:-$kubeconfig}
  [ -x "$state/bin/helm" ] || die "the local cluster at $state has no bin/helm: make cluster-down && make cluster-up"
  cmd_build
  cmd_images
  mkdir -p "$(dirname "$report")"
  "$state/bin/kubectl" delete mesh default --ignore-not-found >/dev/null 2>&1 || true
  # Braid's images as images/build.sh last pushed them to the node's registry (make images).
  local digests
  digests=$(bash "$ROOT/images/build.sh" --digests-values) || exit 1
  "$state/bin/helm" upgrade --install braid "$ROOT/helm/braid" -n braid-system --create-namespace \
    -f "$digests" --wait --timeout 5m >/dev/null
  BRAID_CONFORMANCE_REPORT=$report cmd_run || status=$?
  "$state/bin/helm" uninstall braid -n braid-system --wait >/dev/null 2>&1 || true
  [ -f "$report" ] || die "the suite wrote no report (exit $status)"
  log "report: $report (Gateway API $VERSION, mesh profiles), $((SECONDS - t0)) s in all:"
  summarize "$report" >&2
  [ "$status" = 0 ] || die "a conformance test failed (exit $status): see the test output above and $report"
}

case ${1:-} in
build) cmd_build ;;
check) cmd_check ;;
images) cmd_images ;;
run)
  shift
  cmd_run "$@"
  ;;
*) die "usage: conformance.sh build | images | run [SUITE FLAGS] | check" ;;
esac
