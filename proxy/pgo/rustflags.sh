#!/usr/bin/env bash
# Prints the RUSTFLAGS that build braid-proxy (Cargo profile `proxy`) with profile-guided
# optimisation: proxy/pgo/braid-proxy.profdata.gz holds the branch and call counts that
# `make pgo` recorded while proxy pairs carried a training mix (bench/src/training.rs: other
# bodies, protocols and connection patterns than the benchmark measures), and LLVM lays out
# branches, inlines and separates hot from cold code by them. Used by braid-bench (bench/) and
# images/build.sh; a plain `cargo build --profile proxy` is the same proxy without them, slower.
#
# The profile is unpacked under the target directory (rewritten only when it changed, so cargo
# does not rebuild for nothing). LLVM reads only profiles of its own major version: a rustc with
# another one gets no flags and a warning, and builds a correct, slower proxy.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PGO=$ROOT/proxy/pgo
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

# A recording of other sources still helps (LLVM matches functions by a hash of their control
# flow and skips those that changed), but less each time: say so, once per build.
sources=$(bash "$PGO/sources.sh")
for recording in "pgo/sources.sha256:the profile (make pgo)" "link-order.sha256:the link order (make link-order)"; do
  file=$ROOT/proxy/${recording%%:*}
  if [ -f "$file" ] && [ "$(cat "$file")" != "$sources" ]; then
    echo "proxy: ${recording#*:} was recorded from other sources than these; record it again" \
      "after changes to the request path or Cargo.lock" >&2
  fi
done

recorded=$(cat "$PGO/llvm-version")
llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ "$llvm" != "$recorded" ]; then
  echo "proxy/pgo: the profile was recorded with LLVM $recorded and rustc uses LLVM ${llvm:-?}," \
    "so braid-proxy is built without it (correct, slower); 'make pgo' records one for this toolchain" >&2
  echo "${RUSTFLAGS:-}"
  exit 0
fi
profile=$TARGET/pgo/braid-proxy.profdata
mkdir -p "$TARGET/pgo"
gzip -dc "$PGO/braid-proxy.profdata.gz" >"$profile.new" ||
  { echo "proxy/pgo: braid-proxy.profdata.gz does not unpack; 'make pgo' records it again" >&2; exit 1; }
# LLVM only warns about a file that is not a profile and builds without it: refuse it here.
if [ "$(head -c 8 "$profile.new" | od -An -tx1 | tr -d ' \n')" != ff6c70726f666981 ]; then
  echo "proxy/pgo: braid-proxy.profdata.gz holds no indexed LLVM profile; 'make pgo' records one" >&2
  exit 1
fi
if cmp -s "$profile.new" "$profile"; then rm "$profile.new"; else mv "$profile.new" "$profile"; fi
echo "${RUSTFLAGS:-} -Cprofile-use=$profile"
