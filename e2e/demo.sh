#!/usr/bin/env bash
# `make demo`: the local Kubernetes with its node, Braid's images, Braid installed with its Helm
# chart, the demo apps (examples/demo/apps.yaml: echo v1 and v2, a client sending 20 requests a
# second, an 80/20 MeshRoute), then what a user looks at: `kubectl get pods,meshroutes -A`, the
# split the client measured, and the memory of each sidecar. Everything keeps running until
# `make cluster-down`.
#
# Usage: e2e/demo.sh [--check]
#   --check  also fail unless the demo works as shown: the MeshRoute Programmed, at least 200
#            requests measured, none failed, and v2's share within 12-28 % of the 80/20 split;
#            then remove the demo (the Helm release and namespace braid-demo; the CRDs stay), so
#            the tests that follow start from the cluster as the demo found it. `make test` runs
#            this first on the cluster it starts, which has never seen Braid.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
case ${1:-} in
--check) check=1 ;;
"") ;;
*)
  echo "usage: e2e/demo.sh [--check]" >&2
  exit 2
  ;;
esac

started=$EPOCHSECONDS
step() { printf '\n== %s (%d s)\n' "$*" "$((EPOCHSECONDS - started))"; }

step "the local Kubernetes and its node"
KUBECONFIG=$(bash e2e/cluster/cluster.sh up | tail -n 1)
export KUBECONFIG
STATE=$(dirname "$KUBECONFIG")
kubectl() { "$STATE/bin/kubectl" "$@"; }
helm() { "$STATE/bin/helm" "$@"; }

if [ "$check" = 1 ] && kubectl get crd meshes.braid.dev >/dev/null 2>&1; then
  echo "demo check: this cluster has had Braid's CRDs before, so it cannot show what a new user" \
    "meets; run it on a fresh one: make cluster-down, then make test (or e2e/demo.sh --check)" >&2
  exit 1
fi

step "images (make images: built from the workspace, pushed to the cluster's registry)"
bash images/build.sh --no-check >/dev/null

# The README's install, on this cluster: the images and the chart published to a registry (here
# the cluster's own, whose certificate the cluster CA signed), then helm install from it.
{ read -r registry; read -r registry_ca; } < <(bash e2e/cluster/cluster.sh registry)
version=$(sed -n 's/^version: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' helm/braid/Chart.yaml)
step "make push IMAGE_REPO=$registry/braid && make chart IMAGE_REPO=$registry/braid"
make --no-print-directory push IMAGE_REPO="$registry/braid" REGISTRY_CA="$registry_ca" >/dev/null
make --no-print-directory chart IMAGE_REPO="$registry/braid" REGISTRY_CA="$registry_ca" >/dev/null

step "helm install braid oci://$registry/braid/charts/braid --version $version"
# A Mesh left by a test run belongs to no release; the chart brings its own. On a cluster that
# has never had Braid's CRDs there is no Mesh type at all, and nothing to remove.
if ! helm status braid -n braid-system >/dev/null 2>&1 &&
  kubectl get crd meshes.braid.dev >/dev/null 2>&1; then
  kubectl delete mesh default --ignore-not-found >/dev/null
fi
# The digests pin the images just built: a rebuild keeps the version's tag, and a re-run must
# still roll the pods onto it.
digests=$(bash images/build.sh --digests-values)
helm upgrade --install braid "oci://$registry/braid/charts/braid" --version "$version" --ca-file "$registry_ca" \
  -n braid-system --create-namespace -f "$digests" --wait --timeout 5m >/dev/null
images=$(kubectl get pods -n braid-system -o jsonpath='{.items[*].spec.containers[*].image}')
[[ $images == *"$registry/braid/braid-operator@sha256:"* ]] ||
  { echo "demo: the operator does not run the image pushed to $registry/braid: $images" >&2; exit 1; }

step "the demo apps in namespace braid-demo (labelled for injection)"
kubectl create namespace braid-demo --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl label namespace braid-demo braid.dev/inject=enabled --overwrite >/dev/null
kubectl apply -f examples/demo/apps.yaml >/dev/null
# Pods made before a rebuild run the old images, and pods made before the webhook was ready have
# no sidecar: restart them all.
kubectl rollout restart -n braid-demo deployment >/dev/null
for deployment in echo-v1 echo-v2 client; do
  kubectl rollout status -n braid-demo "deployment/$deployment" --timeout=180s >/dev/null
done
kubectl wait -n braid-demo --for condition=Programmed --timeout=60s meshroute/echo >/dev/null

step "traffic: the client's counts over 20 s"
client_ip=$(kubectl get pod -n braid-demo -l app=client -o jsonpath='{.items[0].status.podIP}')
for _ in $(seq 30); do curl -fsS "http://$client_ip:9090/healthz" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS -X POST "http://$client_ip:9090/reset" >/dev/null
sleep 20
report=$(curl -fsS "http://$client_ip:9090/report")

echo
echo "\$ kubectl get pods,meshroutes -A"
kubectl get pods,meshroutes -A
echo
python3 - "$report" "$check" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
check = sys.argv[2] == "1"
versions = {}
for backend, n in r["backends"].items():
    versions[backend.rsplit("@", 1)[-1]] = versions.get(backend.rsplit("@", 1)[-1], 0) + n
total = max(r["total"], 1)
split = ", ".join(f"{v} {n} ({100 * n / total:.1f}%)" for v, n in sorted(versions.items()))
print(f"measured split over {r['total']} requests in {r['elapsed_secs']:.0f} s: {split}; "
      f"failed {r['failed']}; latency p50 {r['latency_ms']['p50']:.1f} ms, p99 {r['latency_ms']['p99']:.1f} ms")
if check:
    problems = []
    if r["total"] < 200:
        problems.append(f"only {r['total']} requests measured in {r['elapsed_secs']:.0f} s (expected about 400)")
    if r["failed"]:
        problems.append(f"{r['failed']} requests failed")
    v2 = 100 * versions.get("v2", 0) / total
    if not 12 <= v2 <= 28:
        problems.append(f"v2 took {v2:.1f} % of the requests, not 20 % (12-28 %)")
    for problem in problems:
        print(f"demo check: {problem}", file=sys.stderr)
    sys.exit(1 if problems else 0)
PY
echo
echo "sidecar memory (VmRSS of each braid-proxy under this load):"
for pid in $(pgrep -x braid-proxy || true); do
  pod=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^BRAID_POD_NAME=//p')
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null)
  [ -n "$pod" ] && awk -v pod="$pod" -v kib="$rss" 'BEGIN { printf "  %-40s %6.1f MiB\n", pod, kib / 1024 }'

done
if [ "$check" = 1 ]; then
  step "demo check passed; removing the demo"
  helm uninstall braid -n braid-system --wait --timeout 5m >/dev/null
  kubectl delete namespace braid-demo braid-system --wait --timeout=180s >/dev/null
  echo "demo check: passed in $((EPOCHSECONDS - started)) s on a cluster that had no Braid before"
  exit 0
fi
echo
echo "demo ready in $((EPOCHSECONDS - started)) s. Try:  export KUBECONFIG=$KUBECONFIG"
echo "  kubectl patch meshroute echo -n braid-demo --type=json -p '[{\"op\":\"replace\",\"path\":\"/spec/rules/0/backends/1/weight\",\"value\":50}]'"
echo "Stop everything with: make cluster-down"
