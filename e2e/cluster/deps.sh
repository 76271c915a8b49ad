#!/usr/bin/env bash
# Installs what the build and the local cluster need on a fresh Debian machine, and only what is
# missing: a warm machine does no apt work at all. Go and Rust come with the machine image.
set -euo pipefail

missing=()
# command -> Debian package that provides it
for pair in openssl:openssl curl:curl flock:util-linux setsid:util-linux ss:iproute2 realpath:coreutils \
  iptables-restore:iptables iptables-save:iptables; do
  package="${pair#*:}"
  command -v "${pair%%:*}" >/dev/null || [[ " ${missing[*]} " == *" $package "* ]] || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# build-tools.sh also finds Go in /usr/local/go/bin, where the official tarball installs it.
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || {
  echo "deps: 'go' not found: Go 1.26 or newer builds the Kubernetes, etcd and Helm binaries (https://go.dev/doc/install)" >&2
  exit 1
}
command -v cargo >/dev/null || {
  echo "deps: 'cargo' not found: install Rust 1.85 or newer with rustup" >&2
  exit 1
}
