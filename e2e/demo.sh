#!/usr/bin/env bash
# `make demo`: the local Kubernetes, Braid's CRDs, the example routes and the operator, then what
# a user looks at: `kubectl get meshroutes`. The operator keeps running in the background until
# `make cluster-down`.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$EPOCHSECONDS
KUBECONFIG=$(bash e2e/cluster/cluster.sh up | tail -n 1)
export KUBECONFIG
STATE=$(dirname "$KUBECONFIG")
kubectl() { "$STATE/bin/kubectl" "$@"; }

echo "== CRDs (server-side apply, as a GitOps tool would)"
kubectl apply --server-side --field-manager=braid-demo -f crds/
kubectl wait --for condition=Established --timeout=60s \
  crd/meshroutes.braid.dev crd/meshpolicies.braid.dev crd/meshes.braid.dev

echo "== the operator"
# `run` replaces a previous demo's operator (so a rebuilt binary is the one running), and
# `make cluster-down` stops it.
# --skip-webhook until the webhook runs in the cluster (issue 7): no configuration points nowhere.
bash e2e/cluster/cluster.sh run braid-operator "$PWD/target/debug/braid-operator" --admin-addr 127.0.0.1:9990 --skip-webhook
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:9990/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS http://127.0.0.1:9990/readyz >/dev/null ||
  { echo "the operator did not become ready; its log:" >&2; tail -n 30 "$STATE/logs/braid-operator.log" >&2; exit 1; }

echo "== the examples, in namespace braid-demo"
kubectl create namespace braid-demo --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n braid-demo -f examples/
# One route with a backend that does not exist yet, to show how the status reports it.
kubectl apply -n braid-demo -f - <<'YAML'
apiVersion: braid.dev/v1alpha1
kind: MeshRoute
metadata:
  name: reviews-next
spec:
  service: reviews
  rules:
    - backends:
        - service: reviews-v2
          weight: 90
        - service: reviews-v3
          weight: 10
YAML
kubectl wait -n braid-demo --for condition=Accepted --timeout=60s meshroute --all >/dev/null

echo
echo "\$ kubectl get meshroutes -A"
kubectl get meshroutes -A
echo
echo "\$ kubectl get meshroutes -A -o wide"
kubectl get meshroutes -A -o wide
echo
echo "\$ kubectl get meshroute reviews-next -n braid-demo -o jsonpath='{.status.conditions[?(@.type==\"ResolvedRefs\")].message}'"
kubectl get meshroute reviews-next -n braid-demo -o jsonpath='{.status.conditions[?(@.type=="ResolvedRefs")].message}'
echo
echo
echo "demo ready in $((EPOCHSECONDS - started)) s. Try:  export KUBECONFIG=$KUBECONFIG"
echo "  kubectl create service clusterip reviews-v3 -n braid-demo --tcp=8080 && kubectl get mr -n braid-demo"
echo "Stop everything with: make cluster-down"
