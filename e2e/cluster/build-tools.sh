#!/usr/bin/env bash
# Builds the binaries of the local e2e cluster -- the Kubernetes control plane, kubelet, kube-proxy and
# kubectl, etcd, CoreDNS, Helm, and the pod sandboxes' pause program -- from the Go modules pinned in
# e2e/tools/ into a cache directory outside the repository, and prints that directory on the last line of
# stdout (progress goes to stderr). Also the node's image registry (CNCF Distribution) and crane, which
# pushes Braid's images to it, and Prometheus, which the e2e suite runs beside the cluster to scrape the
# proxies (only its Kubernetes service discovery is compiled in: about 6 of the cold build's minutes), and
# Jaeger (v2, an OpenTelemetry Collector distribution), the trace store the tracing test runs in the cluster
# and reads the proxies' and apps' spans back from (about 6 minutes cold on 2 cores, downloads included).
#
# Why compile: no release binaries can be downloaded on these machines, only Go modules from the module
# proxy, and no other registry ships kube-apiserver. A cold build (empty Go caches) costs about 22 CPU
# minutes: an estimated 12-15 minutes on 2 quiet cores; 24 were measured while other builds shared them
# (Kubernetes 17, CoreDNS 2.7, Helm 2.5, etcd 1.2). It peaks at about 1.9 GB of memory and leaves 4.4 GB
# of GOCACHE and 1.5 GB of module downloads.
#
# Idempotent: a binary is (re)built only when it is missing or reports another version than the one its
# go.mod pins, so a warm run costs a few version checks.
#
# Usage: build-tools.sh [--cluster] [TOOL...]
#        only these (kubernetes, etcd, helm, coredns, pause, registry, crane, prometheus, jaeger; default
#        all): `make push` needs crane alone, `make chart` helm alone. --cluster: what the local cluster
#        runs, i.e. all but prometheus and jaeger.
# Environment:
#   BRAID_TOOLS_DIR  cache directory (default: $XDG_CACHE_HOME/braid/tools/k8s-<version>-<go version>)
set -euo pipefail

TOOLS_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../tools" && pwd)

# Commands built from e2e/tools/kubernetes (its tools.go imports each, so go.sum covers them): the control
# plane, kubectl, and the node's kubelet and kube-proxy, all from the one pinned release.
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

log() { printf 'build-tools: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

ALL_TOOLS=(kubernetes etcd helm coredns pause registry crane prometheus jaeger)
# What the local cluster runs, and crane, which pushes to its registry. Its callers ask for --cluster
# rather than name the tools, so that this is the one list. The e2e tests that use Prometheus or Jaeger
# build them on first use.
CLUSTER_TOOLS=(kubernetes etcd helm coredns pause registry crane)

wanted=()
for arg in "$@"; do
  case $arg in
  --cluster) wanted+=("${CLUSTER_TOOLS[@]}") ;;
  *)
    [[ " ${ALL_TOOLS[*]} " == *" $arg "* ]] || die "no tool $arg: one of ${ALL_TOOLS[*]}, or --cluster"
    wanted+=("$arg")
    ;;
  esac
done
[ ${#wanted[@]} -gt 0 ] || wanted=("${ALL_TOOLS[@]}")
wants() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

# shellcheck source=e2e/cluster/go-env.sh
. "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"
# shellcheck source=e2e/cluster/lock.sh
. "$(dirname "${BASH_SOURCE[0]}")/lock.sh"
export CGO_ENABLED=0     # static binaries, as upstream builds the control plane

# Version that module $1 (a directory under e2e/tools) pins for module path $2: go.mod is the single
# source of truth, so bumping a version there is all it takes to get a rebuild.
pinned() { (cd "$TOOLS_SRC/$1" && go list -mod=readonly -m -f '{{.Version}}' "$2"); }

K8S_VERSION=$(pinned kubernetes k8s.io/kubernetes)
ETCD_VERSION=$(pinned etcd go.etcd.io/etcd/server/v3)
HELM_VERSION=$(pinned helm helm.sh/helm/v3)
COREDNS_VERSION=$(pinned coredns github.com/coredns/coredns)
REGISTRY_VERSION=$(pinned registry github.com/distribution/distribution/v3)
CRANE_VERSION=$(pinned crane github.com/google/go-containerregistry)
PROMETHEUS_VERSION=$(pinned prometheus github.com/prometheus/prometheus)
JAEGER_VERSION=$(pinned jaeger github.com/jaegertracing/jaeger)
# pause has no upstream version: its own source is what it is built from.
PAUSE_VERSION=$(sha256sum "$TOOLS_SRC/pause/main.go" | cut -c1-12)

OUT=${BRAID_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/braid/tools/k8s-$K8S_VERSION-$(go env GOVERSION)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# The version a built binary reports, normalised to the form go.mod uses (vX.Y.Z).
version_of() {
  local bin=$OUT/$1
  case $1 in
  kubectl) "$bin" version --client | awk 'NR == 1 { print $3 }' ;; # "Client Version: v1.34.3"
  etcd) "$bin" --version | awk 'NR == 1 { print "v" $3 }' ;;     # "etcd Version: 3.6.16"
  helm) "$bin" version --template '{{.Version}}' ;;
  coredns) "$bin" -version | awk 'NR == 1 { sub("CoreDNS-", "v"); print }' ;; # "CoreDNS-1.15.0"
  pause) "$bin" -v ;;
  registry) "$bin" --version | awk '{ print $3 }' ;; # "registry github.com/distribution/distribution/v3 v3.1.2"
  crane) "$bin" version ;;
  prometheus) "$bin" --version | awk 'NR == 1 { print $3 }' ;; # "prometheus, version v0.316.0 (...)"
  jaeger) "$bin" version 2>/dev/null | sed -n 's/.*"gitVersion":"\([^"]*\)".*/\1/p' ;; # {"gitVersion":"v1.75.0",...}
  *) "$bin" --version | awk '{ print $2 }' ;; # "Kubernetes v1.34.3"
  esac
}

# True when $OUT/$1 exists and reports version $2.
current() { [ -x "$OUT/$1" ] && [ "$(version_of "$1" 2>/dev/null)" = "$2" ]; }

# True when $OUT/$1 must be built (it is not at version $2). Two runs may want one tool at once (`make
# test` builds the tools only later tests use beside them, and a test may ask for one first): the first
# run that builds holds a lock until it exits, and a second one waits for it, then looks again.
locked=0
needs() {
  current "$1" "$2" && return 1
  if [ $locked = 0 ]; then
    lock_or_wait "$OUT/.build.lock" "another build-tools.sh"
    locked=1
    current "$1" "$2" && return 1
  fi
  return 0
}

# go build into a scratch directory inside $OUT, then move the results into place, so an interrupted build
# never leaves a half-written binary that a later run would take for a finished one.
# $1 = module directory under e2e/tools, $2 = -ldflags, rest = packages (one binary each, named by the
# last element of the package path).
build() {
  local module=$1 ldflags=$2 scratch start
  shift 2
  scratch=$(mktemp -d "$OUT/.build.XXXXXX")
  start=$SECONDS
  log "building $* (module e2e/tools/$module) ..."
  if ! (cd "$TOOLS_SRC/$module" && go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$scratch/" "$@"); then
    rm -rf "$scratch"
    die "go build failed in e2e/tools/$module"
  fi
  mv -f "$scratch"/* "$OUT/"
  rmdir "$scratch"
  log "built $* in $((SECONDS - start)) s"
}

# Kubernetes: stamp the version into both packages that report it (as hack/lib/version.sh does), else
# /version and `kubectl version` say v0.0.0-master and Helm's kubeVersion checks see v0.0.0.
# The commit and date are fixed values, which keeps the build reproducible.
k8s_ldflags() {
  local major minor flags="-s -w" pkg
  major=${K8S_VERSION#v}
  minor=${major#*.}
  major=${major%%.*}
  minor=${minor%%.*}
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=0000000000000000000000000000000000000000"
    flags+=" -X $pkg.buildDate=2025-12-09T00:00:00Z"
  done
  printf '%s' "$flags"
}

missing=()
wants kubernetes && for cmd in "${K8S_COMMANDS[@]}"; do
  if needs "$cmd" "$K8S_VERSION"; then missing+=("k8s.io/kubernetes/cmd/$cmd"); fi
done
# One go build for all of them: they share most packages, and go compiles those once, in parallel.
[ ${#missing[@]} -eq 0 ] || build kubernetes "$(k8s_ldflags)" "${missing[@]}"

# etcd's version is a constant in its source, so it needs no -X. Its main package is the module root
# go.etcd.io/etcd/server/v3, which go names "server"; the rename gives it its usual name.
if wants etcd && needs etcd "$ETCD_VERSION"; then
  build etcd "-s -w" go.etcd.io/etcd/server/v3
  mv -f "$OUT/server" "$OUT/etcd"
fi

# Without the -X, `helm version` reports only the minor version compiled into the source (e.g. v3.22).
wants helm && needs helm "$HELM_VERSION" &&
  build helm "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" helm.sh/helm/v3/cmd/helm

# CoreDNS's version is a constant in its source (coremain.CoreVersion). The main package is ours
# (e2e/tools/coredns), so go names the binary after the module's last element: coredns.
wants coredns && needs coredns "$COREDNS_VERSION" && build coredns "-s -w" braid.dev/e2e/tools/coredns

wants pause && needs pause "$PAUSE_VERSION" && build pause "-s -w -X main.version=$PAUSE_VERSION" braid.dev/e2e/tools/pause

# Both report the version that -X stamps (built as dependencies, they would not know their own).
wants registry && needs registry "$REGISTRY_VERSION" && build registry \
  "-s -w -X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION" \
  github.com/distribution/distribution/v3/cmd/registry
wants crane && needs crane "$CRANE_VERSION" && build crane \
  "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$CRANE_VERSION" \
  github.com/google/go-containerregistry/cmd/crane

# Prometheus with the Kubernetes service discovery alone (its build tags drop the cloud ones, most of
# its dependencies). Its -X is the module's version, which the Prometheus release v3.N.M is v0.3NN.M of.
wants prometheus && needs prometheus "$PROMETHEUS_VERSION" && build prometheus \
  "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
  -tags remove_all_sd,enable_kubernetes_sd github.com/prometheus/prometheus/cmd/prometheus

# Jaeger has no build tags that drop its storage backends, so it is built whole. Its -X is the module's
# version, which `jaeger version` reports (the Jaeger v2 release of the same commit is v2.N.M).
wants jaeger && needs jaeger "$JAEGER_VERSION" && build jaeger \
  "-s -w -X github.com/jaegertracing/jaeger/internal/version.latestVersion=$JAEGER_VERSION" \
  github.com/jaegertracing/jaeger/cmd/jaeger

for cmd in "${K8S_COMMANDS[@]}" etcd helm coredns pause registry crane prometheus jaeger; do
  { [[ " ${K8S_COMMANDS[*]} " == *" $cmd "* ]] && wants kubernetes; } || wants "$cmd" || continue
  log "$(printf '%-24s %s' "$cmd" "$(version_of "$cmd")")"
done
echo "$OUT"
