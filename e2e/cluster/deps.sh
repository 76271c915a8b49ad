#!/usr/bin/env bash
# Installs what the build and the local cluster need on a fresh Debian machine, and only what is
# missing: a warm machine does no apt work at all. Go and Rust come with the machine image.
#
# The node of the local cluster (node.sh) runs Debian's containerd and runc with Debian's CNI plugins;
# its images are built with umoci, and the test image's root filesystem is busybox-static. conntrack is
# what kube-proxy's tooling expects on a node (kubeadm checks for it). socat and ethtool, which older
# node guides list, are not needed: containerd 1.6 forwards ports itself and nothing calls ethtool.
set -euo pipefail

missing=()
add() { [[ " ${missing[*]} " == *" $1 "* ]] || missing+=("$1"); }
# command -> Debian package that provides it
for pair in openssl:openssl curl:curl flock:util-linux setsid:util-linux mountpoint:util-linux ss:iproute2 \
  ip:iproute2 realpath:coreutils iptables-restore:iptables iptables-save:iptables pgrep:procps sysctl:procps \
  containerd:containerd ctr:containerd containerd-shim-runc-v2:containerd runc:runc umoci:umoci \
  conntrack:conntrack; do
  command -v "${pair%%:*}" >/dev/null || add "${pair#*:}"
done
# Files rather than commands: the CNI plugins live in /usr/lib/cni; and the test image needs the static
# busybox, not Debian's dynamically linked busybox package, which installs the same /bin/busybox.
{ [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ]; } ||
  add containernetworking-plugins
[ "$(dpkg-query -W -f '${Status}' busybox-static 2>/dev/null)" = "install ok installed" ] || add busybox-static
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# build-tools.sh also finds Go in /usr/local/go/bin, where the official tarball installs it.
command -v go >/dev/null || [ -x /usr/local/go/bin/go ] || {
  echo "deps: 'go' not found: Go 1.26 or newer builds the Kubernetes, etcd, CoreDNS and Helm binaries (https://go.dev/doc/install)" >&2
  exit 1
}
command -v cargo >/dev/null || {
  echo "deps: 'cargo' not found: install Rust 1.85 or newer with rustup" >&2
  exit 1
}
