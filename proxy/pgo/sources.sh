#!/usr/bin/env bash
# Prints a hash of what braid-proxy is built from: its own sources, those of the workspace crates
# it links (api, runtime) and Cargo.lock. `make pgo` and `make link-order` store it beside what
# they record (proxy/pgo/sources.sha256, proxy/link-order.sha256); proxy/pgo/rustflags.sh
# compares, and says when a recording no longer matches the code.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
{
  find proxy/src api/src runtime/src -name '*.rs' -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 -r cat || true
  cat proxy/Cargo.toml Cargo.lock 2>/dev/null || true
} | sha256sum | cut -d' ' -f1
