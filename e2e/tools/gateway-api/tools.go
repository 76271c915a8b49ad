//go:build tools

// Pins the Gateway API release whose standard-channel CRDs the local cluster installs (and the chart
// ships), and whose conformance suite runs against Braid. Nothing here is product code. A module of its
// own, so that the suite's dependency versions never shift those of Kubernetes, etcd or Helm.
package tools

import (
	_ "sigs.k8s.io/gateway-api/conformance"
)
