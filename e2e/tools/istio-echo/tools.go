//go:build tools

// Pins Istio's echo app, the server and client of the image the Gateway API conformance suite's mesh
// tests run (registry.k8s.io/gateway-api/echo-advanced, upstream an Istio app image): the suite execs the
// client in one echo pod to call the others. Built from its Go packages, since no image can be pulled
// here. A module of its own: Istio's dependency versions must not shift the suite's. Istio tags no Go
// module versions, so the pin is a pseudo-version of its main branch.
package tools

import (
	_ "istio.io/istio/pkg/test/echo/cmd/client"
	_ "istio.io/istio/pkg/test/echo/cmd/server"
)
