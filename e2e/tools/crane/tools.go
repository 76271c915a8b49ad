//go:build tools

// Package tools pins crane (go-containerregistry); the build tag keeps it out of builds while
// `go mod tidy` still records its dependencies.
package tools

import (
	_ "github.com/google/go-containerregistry/cmd/crane"
)
