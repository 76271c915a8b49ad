//go:build tools

// Package tools pins Jaeger, the trace store the e2e suite's tracing test sends spans to and reads
// them back from; the build tag keeps it out of builds while `go mod tidy` still records its
// dependencies.
package tools

import (
	_ "github.com/jaegertracing/jaeger/cmd/jaeger"
)
