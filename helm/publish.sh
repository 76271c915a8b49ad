#!/usr/bin/env bash
# `make chart`: packages the braid chart with REPO as its images' registry (image.registry), so that
# `helm install braid oci://REPO/charts/braid --version VERSION` runs the images `make push` pushed
# there, and pushes the package to oci://REPO/charts as an OCI artifact.
#
# Usage: helm/publish.sh REPO      e.g. helm/publish.sh registry.example.com/braid
# Environment:
#   REGISTRY_CA  a CA certificate file to trust for REPO (a registry with a private CA); otherwise the
#                system's CAs. Helm logs in as `helm registry login` did.
#   HELM         the helm binary (default: the one e2e/cluster/build-tools.sh builds from its Go module
#                on first use; any v3.8+ has OCI support)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() {
  printf 'chart: %s\n' "$*" >&2
  exit 1
}

REPO=${1:-}
[[ $REPO =~ ^[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*$ ]] ||
  die "usage: make chart IMAGE_REPO=registry.example.com/braid (a repository: no scheme, no tag, no trailing /), got '$REPO'"
HELM=${HELM:-$(bash "$ROOT/e2e/cluster/build-tools.sh" helm | tail -n 1)/helm}
[ -x "$HELM" ] || command -v "$HELM" >/dev/null || die "no helm at $HELM: run 'make tools' or set HELM"
ca=()
if [ -n "${REGISTRY_CA:-}" ]; then
  [ -f "$REGISTRY_CA" ] || die "REGISTRY_CA=$REGISTRY_CA is not a file"
  ca=(--ca-file "$REGISTRY_CA")
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$ROOT/helm/braid" "$work/braid"
# The one line of values.yaml that names the registry (the schema checks the result below).
grep -q '^  registry: braid.dev$' "$work/braid/values.yaml" || die "helm/braid/values.yaml has no '  registry: braid.dev' line to replace"
sed -i "s|^  registry: braid.dev\$|  registry: $REPO|" "$work/braid/values.yaml"
"$HELM" lint --strict "$work/braid" >"$work/lint.log" 2>&1 || { cat "$work/lint.log" >&2; die "the packaged chart does not lint"; }
"$HELM" package "$work/braid" -d "$work" >/dev/null
package=$(ls "$work"/braid-*.tgz)
"$HELM" push "$package" "oci://$REPO/charts" "${ca[@]}" 2>&1 | sed 's/^/chart: /' >&2
version=$(sed -n 's/^version: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$work/braid/Chart.yaml")
echo "helm install braid oci://$REPO/charts/braid --version $version -n braid-system --create-namespace"
