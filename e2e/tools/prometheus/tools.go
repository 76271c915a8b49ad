//go:build tools

// Package tools pins Prometheus, which the e2e suite runs beside the local cluster to scrape the
// meshed pods' proxies with a standard Kubernetes scrape job and to run Flagger's and Linkerd's
// queries against them; the build tag keeps it out of builds while `go mod tidy` still records its
// dependencies.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
)
