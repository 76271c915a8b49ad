//go:build tools

// Package tools pins the etcd server command; the build tag keeps it out of builds while
// `go mod tidy` still records its dependencies. The module root of go.etcd.io/etcd/server/v3
// is itself `package main`.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
