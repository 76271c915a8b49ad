//go:build tools

// Package tools pins the Helm CLI; the build tag keeps it out of builds while
// `go mod tidy` still records its dependencies.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
