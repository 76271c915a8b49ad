#!/usr/bin/env bash
# The Gateway API's standard-channel CRDs (HTTPRoute, GRPCRoute, ReferenceGrant, Gateway, ...) of the release
# that e2e/tools/gateway-api/go.mod pins, taken from the Go module sigs.k8s.io/gateway-api (its
# config/crd/standard/) through the Go module proxy -- the only place these machines can fetch it from.
#
#   gateway-api.sh dir     copy them into a cache directory (once per release) and print it on the last line
#   gateway-api.sh apply KUBECONFIG
#                          install them into a cluster unless it already has this release (server-side apply:
#                          the HTTPRoute CRD is larger than the annotation a client-side apply would write)
#   gateway-api.sh chart   refresh the chart's copy (helm/braid/gateway-api/) of the CRDs Braid reads
#
# Environment:
#   BRAID_TOOLS_DIR  cache root, as for build-tools.sh (default: $XDG_CACHE_HOME/braid/tools)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MODULE_DIR=$HERE/../tools/gateway-api
CHART_DIR=$HERE/../../helm/braid/gateway-api
# The kinds Braid reads; the chart ships only these (the cluster gets the whole standard channel).
CHART_CRDS=(httproutes grpcroutes referencegrants)

log() { printf 'gateway-api: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# shellcheck source=e2e/cluster/go-env.sh
. "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"

VERSION=$(cd "$MODULE_DIR" && go list -mod=readonly -m -f '{{.Version}}' sigs.k8s.io/gateway-api)
OUT=${BRAID_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/braid/tools}/gateway-api-$VERSION

# Fills $OUT from the module (go.sum checks the download), unless an earlier run did.
crds_dir() {
  if [ ! -e "$OUT/.complete" ]; then
    local module scratch
    log "fetching sigs.k8s.io/gateway-api@$VERSION ..."
    # go mod download checks the module against go.sum, so the YAML is the pinned release's.
    module=$(cd "$MODULE_DIR" && go mod download -json sigs.k8s.io/gateway-api |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$module/config/crd/standard" ] || die "sigs.k8s.io/gateway-api@$VERSION has no config/crd/standard"
    mkdir -p "$(dirname "$OUT")"
    scratch=$(mktemp -d "$(dirname "$OUT")/.gateway-api.XXXXXX")
    cp "$module"/config/crd/standard/*.yaml "$scratch/"
    chmod 0644 "$scratch"/*.yaml
    chmod 0755 "$scratch"
    touch "$scratch/.complete"
    rm -rf "$OUT"
    mv "$scratch" "$OUT"
  fi
  echo "$OUT"
}

case ${1:-dir} in
dir) crds_dir ;;
apply)
  kubeconfig=${2:?usage: gateway-api.sh apply KUBECONFIG}
  dir=$(crds_dir | tail -n 1)
  kubectl=$(dirname "$kubeconfig")/bin/kubectl
  [ -x "$kubectl" ] || kubectl=kubectl
  installed=$("$kubectl" --kubeconfig="$kubeconfig" get crd httproutes.gateway.networking.k8s.io \
    -o 'jsonpath={.metadata.annotations.gateway\.networking\.k8s\.io/bundle-version}' 2>/dev/null || true)
  if [ "$installed" = "$VERSION" ]; then
    log "Gateway API $VERSION CRDs already installed"
    exit 0
  fi
  log "installing the Gateway API $VERSION standard-channel CRDs"
  # The CRD files by name: nothing else in the folder is applied.
  files=()
  for file in "$dir"/gateway.networking.k8s.io_*.yaml; do files+=(-f "$file"); done
  "$kubectl" --kubeconfig="$kubeconfig" apply --server-side --force-conflicts \
    --field-manager=braid-cluster "${files[@]}" >/dev/null
  "$kubectl" --kubeconfig="$kubeconfig" wait --for=condition=Established --timeout=60s \
    crd/httproutes.gateway.networking.k8s.io crd/grpcroutes.gateway.networking.k8s.io \
    crd/referencegrants.gateway.networking.k8s.io >/dev/null
  ;;
chart)
  dir=$(crds_dir | tail -n 1)
  mkdir -p "$CHART_DIR"
  rm -f "$CHART_DIR"/*.yaml
  for kind in "${CHART_CRDS[@]}"; do
    cp "$dir/gateway.networking.k8s.io_$kind.yaml" "$CHART_DIR/"
  done
  chmod 0644 "$CHART_DIR"/*.yaml
  log "helm/braid/gateway-api/ now holds the $VERSION CRDs of: ${CHART_CRDS[*]}"
  ;;
*) die "unknown command ${1}: dir, apply KUBECONFIG or chart" ;;
esac
