//go:build tools

// Package tools pins the CNCF Distribution registry; the build tag keeps it out of builds while
// `go mod tidy` still records its dependencies.
package tools

import (
	_ "github.com/distribution/distribution/v3/cmd/registry"
)
