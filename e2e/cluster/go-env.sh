# Sourced by the scripts that run the go command (build-tools.sh, gateway-api.sh, conformance.sh),
# after they define `die`: Go on PATH, and never another toolchain fetched behind our back.
if ! command -v go >/dev/null; then
  # The polyglot machine image installs Go in /usr/local/go, which a non-login shell may lack on PATH.
  [ -x /usr/local/go/bin/go ] || die "no 'go' on PATH. The pinned etcd and Helm need Go >= 1.26 (Kubernetes 1.34: >= 1.24;
  Debian's golang-go is 1.19, too old). Use the 'polyglot' machine kind, whose image has Go in /usr/local/go,
  or install a Go >= 1.26 toolchain and put its bin/ directory on PATH."
  PATH=/usr/local/go/bin:$PATH
fi
export GOTOOLCHAIN=local
