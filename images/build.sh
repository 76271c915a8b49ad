#!/usr/bin/env bash
# Braid's container images, built from the workspace's release binaries without Docker, and pushed to a
# registry: the local cluster's (`make images`), whose node pulls braid.dev/NAME from it, or yours
# (`make push IMAGE_REPO=registry.example.com/braid`).
#
# Each image (images/NAME.conf says what goes in) is one layer for linux/amd64: the binaries, the shared
# libraries `ldd` lists for them (glibc and the dynamic loader at their paths), /etc/passwd and /etc/group
# with the user it runs as, /etc/nsswitch.conf, /tmp, CA certificates where the binary may need them, the
# crates it is built from (/usr/share/doc/braid/NAME.dependencies: name, version and licence of each, from
# Cargo.lock), and for braid-proxy Debian's iptables (nft and legacy, with their modules), which
# `braid-proxy init` runs. Its config carries the OCI labels org.opencontainers.image.{title,version,
# revision,licenses} and .source when Cargo.toml names the repository. umoci (Debian) makes the OCI layout; crane (go-containerregistry, built by
# e2e/cluster/build-tools.sh) pushes it, checks the digest the registry answers with, and adds the other tags.
#
# Incremental: an image whose root filesystem and labels are byte for byte what the cached archive holds
# is not rebuilt, and not pushed again when the registry has that very manifest under every tag.
#
# Usage: images/build.sh [--no-push] [--no-check] [--push-to REPO] [NAME...]   (NAME: braid-proxy,
#        braid-operator, braid-webhook, braid-testapps; default all)
#   --no-push        build the archives only (in the cache directory); no cluster needed
#   --no-check       skip pulling each image into the node's containerd and running its binaries
#   --digests-values print the path of the Helm values file that pins the chart to the images last
#                    pushed to the local cluster's registry (image.digests); fails when there is none
#   --push-to REPO   push to REPO/NAME:VERSION (VERSION: the chart's appVersion) instead of the local
#                    cluster's registry; crane logs in as `crane auth login` or `docker login` did, and
#                    trusts the system's CAs, or REGISTRY_CA (a CA certificate file). No check runs.
# Environment:
#   BRAID_IMAGES_DIR   where the archives, their input hashes and digests are kept
#                      (default ${XDG_CACHE_HOME:-~/.cache}/braid/images), digests.values.yaml included
#   BRAID_IPTABLES     which iptables `iptables-restore` is in braid-proxy's image: nft or legacy
#                      (default: the host's choice, Debian's alternatives; both are in the image)
#   CARGO, CARGO_TARGET_DIR  as for cargo
set -euo pipefail
umask 022

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF_DIR=$ROOT/images
CACHE=${BRAID_IMAGES_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/braid/images}
DIGESTS_VALUES=$CACHE/digests.values.yaml
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CARGO=${CARGO:-cargo}
CLUSTER="bash $ROOT/e2e/cluster/cluster.sh"
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$ROOT/helm/braid/Chart.yaml")
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { printf 'images: %s\n' "$*" >&2; }
die() {
  printf 'images: %s\n' "$*" >&2
  exit 1
}

push=1 check=1 push_to="" names=()
while [ $# -gt 0 ]; do
  case $1 in
  --no-push) push=0 ;;
  --no-check) check=0 ;;
  --digests-values)
    [ -f "$DIGESTS_VALUES" ] || die "$DIGESTS_VALUES is missing: build and push the images with: make images"
    echo "$DIGESTS_VALUES"
    exit 0
    ;;
  --push-to)
    [ $# -ge 2 ] && [[ $2 =~ ^[a-zA-Z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*$ ]] ||
      die "--push-to needs a repository like registry.example.com/braid (no tag, no trailing /), got '${2:-}'"
    push_to=$2
    check=0
    shift
    ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | cut -c3-
    exit 0
    ;;
  -*) die "unknown option $1 (see --help)" ;;
  *)
    [ -f "$CONF_DIR/$1.conf" ] || die "no image $1: images/$1.conf does not exist"
    names+=("$1")
    ;;
  esac
  shift
done
if [ ${#names[@]} -eq 0 ]; then
  for conf in "$CONF_DIR"/*.conf; do names+=("$(basename "$conf" .conf)"); done
fi
[ -n "$APP_VERSION" ] || die "no appVersion in helm/braid/Chart.yaml"

# Debian's umoci; `make deps` installs it, this covers a machine where only the images are built.
if ! command -v umoci >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing umoci (Debian package umoci)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci >/dev/null; } ||
      die "cannot install umoci: apt-get install umoci"
  else
    die "umoci is not installed: apt-get install umoci (or make deps)"
  fi
fi
for tool in ldd strip sha256sum tar; do
  command -v "$tool" >/dev/null || die "$tool is missing (Debian packages libc-bin, binutils, coreutils, tar)"
done

# The file paths `ldd` lists for an ELF file: its libraries and the dynamic loader.
libraries() {
  ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'
}

# Copies FILE into ROOTFS at PATH (default: the same path), following symlinks, with its mode, and
# then every library it needs that is not there yet.
add_file() {
  local rootfs=$1 file=$2 path=${3:-$2} lib
  [ -e "$rootfs$path" ] || install -D -m "$(stat -Lc %a "$file")" "$file" "$rootfs$path"
  for lib in $(libraries "$file"); do
    [ -e "$rootfs$lib" ] || install -D -m "$(stat -Lc %a "$lib")" "$lib" "$rootfs$lib"
  done
}

# Debian's iptables: both xtables multi-binaries, the command names pointing at them
# (iptables-restore and iptables-save at the host's choice or $BRAID_IPTABLES), and the match and
# target modules libxtables loads at run time (with their libraries).
add_iptables() {
  local rootfs=$1 mode=${BRAID_IPTABLES:-} multi module name
  if [ -z "$mode" ]; then
    case $(readlink -f "$(command -v iptables-restore || echo /usr/sbin/iptables-restore)") in
    *legacy*) mode=legacy ;;
    *) mode=nft ;;
    esac
  fi
  [ "$mode" = nft ] || [ "$mode" = legacy ] || die "BRAID_IPTABLES is $mode: nft or legacy"
  for multi in xtables-nft-multi xtables-legacy-multi; do
    [ -x "/usr/sbin/$multi" ] || die "/usr/sbin/$multi is missing: apt-get install iptables"
    add_file "$rootfs" "/usr/sbin/$multi"
  done
  for name in iptables ip6tables; do
    for suffix in "" -restore -save; do
      ln -s xtables-nft-multi "$rootfs/usr/sbin/$name-nft$suffix"
      ln -s xtables-legacy-multi "$rootfs/usr/sbin/$name-legacy$suffix"
      ln -s "xtables-$mode-multi" "$rootfs/usr/sbin/$name$suffix"
    done
  done
  for module in /usr/lib/x86_64-linux-gnu/xtables/*.so; do
    add_file "$rootfs" "$module"
  done
  # Protocol names (-p tcp) resolve through /etc/protocols when libxtables' own table lacks one.
  [ ! -f /etc/protocols ] || install -m 0644 /etc/protocols "$rootfs/etc/protocols"
}

# Builds NAME's root filesystem in $work/rootfs from its conf (already sourced).
make_rootfs() {
  local rootfs=$1 binary
  mkdir -p "$rootfs"/{etc,run,tmp,usr/local/bin,usr/sbin}
  chmod 1777 "$rootfs/tmp"
  # Root, the chart's non-root user and the proxy's UID, so each shows by name (ps, logs).
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' \
    'braid-proxy:x:2102:2102:braid-proxy:/:/sbin/nologin' >"$rootfs/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' 'braid-proxy:x:2102:' >"$rootfs/etc/group"
  # glibc's default without this file puts DNS before /etc/hosts.
  printf '%s\n' 'hosts: files dns' 'networks: files' >"$rootfs/etc/nsswitch.conf"
  local built=$TARGET/${PROFILE:-release}
  for binary in $BINARIES; do
    [ -x "$built/$binary" ] || die "$built/$binary was not built"
    # Without debug info (line tables): a fifth of the size, and backtraces keep function names.
    strip --strip-debug -o "$rootfs/usr/local/bin/$binary" "$built/$binary"
    chmod 0755 "$rootfs/usr/local/bin/$binary"
    add_file "$rootfs" "$built/$binary" "/usr/local/bin/$binary"
  done
  if [ "$CA_CERTS" = 1 ]; then
    [ -f /etc/ssl/certs/ca-certificates.crt ] || die "/etc/ssl/certs/ca-certificates.crt is missing: apt-get install ca-certificates"
    install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  [ "$IPTABLES" != 1 ] || add_iptables "$rootfs"
  install -D -m 0644 "$CACHE/.deps/$PACKAGE" "$rootfs/usr/share/doc/braid/$PACKAGE.dependencies"
}

# The crates PACKAGE is built from, as Cargo.lock resolves them (normal dependencies, host platform):
# "name version licence" a line, sorted; the workspace's own crates without their paths.
dependency_list() {
  "$CARGO" tree --locked --manifest-path "$ROOT/Cargo.toml" -p "$1" -e normal --prefix none \
    --format '{p} {l}' 2>/dev/null | sed -e 's/ (\*)$//' -e 's/^\([^ ]* v[^ ]*\) ([^)]*)/\1/' | LC_ALL=C sort -u
}

# A hash of everything the image is made of: each path's type, mode and content (or link target),
# and the image config.
inputs_hash() {
  local rootfs=$1
  {
    (cd "$rootfs" && find . -printf '%p %y %m %l\n' | LC_ALL=C sort)
    (cd "$rootfs" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
    printf 'config %s|%s|%s|%s|%s|%s\n' "$REPOSITORY" "$TAGS" "$ENTRYPOINT" "${CMD:-}" "$USER" "$REVISION"
    # The umoci steps below are inputs too.
    sed -n '/^build_archive()/,/^}/p' "${BASH_SOURCE[0]}"
  } | sha256sum | cut -d' ' -f1
}

# The OCI archive $CACHE/NAME.tar of $work/rootfs, tagged with the first of TAGS (one image per layout:
# crane pushes it under that tag and adds the others in the registry).
build_archive() {
  local name=$1 work=$2 first
  local layout=$work/layout
  first=${TAGS%% *}
  {
    umoci init --layout "$layout"
    umoci new --image "$layout:$first"
    umoci insert --image "$layout:$first" "$work/rootfs" /
    local config=(--config.user "$USER" --config.workingdir / --config.env "PATH=$IMAGE_PATH"
      --config.label "org.opencontainers.image.title=$name"
      --config.label "org.opencontainers.image.version=$APP_VERSION"
      --config.label "org.opencontainers.image.revision=$REVISION"
      --config.label "org.opencontainers.image.licenses=$LICENSE"
      --config.label "dev.braid.image.inputs=$3")
    if [ -n "$SOURCE" ]; then config+=(--config.label "org.opencontainers.image.source=$SOURCE"); fi
    if [ -n "$ENTRYPOINT" ]; then config+=(--config.entrypoint "$ENTRYPOINT"); fi
    if [ -n "${CMD:-}" ]; then config+=(--config.cmd "$CMD"); fi
    umoci config --image "$layout:$first" "${config[@]}"
    umoci gc --layout "$layout"
    tar -C "$layout" -cf "$work/image.tar" .
  } >"$work/umoci.log" 2>&1 || {
    cat "$work/umoci.log" >&2
    die "umoci failed building $name"
  }
  mv -f "$work/image.tar" "$CACHE/$name.tar"
}

# The manifest digest every tag of the archive's layout points at.
archive_digest() {
  local digests
  digests=$(tar -xOf "$1" ./index.json | grep -o 'sha256:[0-9a-f]\{64\}' | sort -u)
  [ "$(wc -l <<<"$digests")" = 1 ] || die "$1: expected one manifest in index.json, found: $digests"
  echo "$digests"
}

# The manifest digest REF has in the registry, empty if none.
remote_digest() { crane digest "$1" 2>/dev/null || true; }

human() { numfmt --to=iec --suffix=B "$1" 2>/dev/null || echo "${1}B"; }

# --- build the binaries --------------------------------------------------------------------------
# One cargo build per Cargo profile the confs name (PROFILE=, default release), of every image's package
# whichever images were asked for: cargo unifies the features of the packages built together, so building
# fewer would give the same image another binary, and another digest, than `make images` pushed.
declare -A packages_of
for conf in "$CONF_DIR"/*.conf; do
  package=$(sed -n 's/^PACKAGE=//p' "$conf")
  profile=$(sed -n 's/^PROFILE=//p' "$conf")
  profile=${profile:-release}
  [[ " ${packages_of[$profile]:-} " == *" -p $package "* ]] || packages_of[$profile]+=" -p $package"
done
for profile in "${!packages_of[@]}"; do
  read -r -a packages <<<"${packages_of[$profile]}"
  log "building ${packages[*]//-p /} (profile $profile)"
  t0=$SECONDS
  flags=${RUSTFLAGS:-}
  # The proxy is built with its recorded profile (profile-guided optimisation, proxy/pgo/).
  if [ "$profile" = proxy ]; then flags=$(bash "$ROOT/proxy/pgo/rustflags.sh"); fi
  RUSTFLAGS=$flags nice "$CARGO" build --profile "$profile" --locked --manifest-path "$ROOT/Cargo.toml" "${packages[@]}"
  log "binaries ready in $((SECONDS - t0)) s"
done

# proxy/build.rs lays the proxy's start-up and per-request code out first, by the names in
# proxy/link-order.txt; that keeps ~4 MiB of the binary out of every sidecar's RSS. A dependency
# or toolchain change renames functions and the layout falls apart: the image still works, only
# with a larger RSS, so say so loudly rather than fail the build.
if [ -n "${packages_of[proxy]:-}" ]; then
  bin=$TARGET/proxy/braid-proxy
  wanted=$(grep -v '^#' "$ROOT/proxy/link-order.txt" | LC_ALL=C sort)
  listed=$(wc -l <<<"$wanted")
  present=$(LC_ALL=C comm -12 <(echo "$wanted") <(nm --defined-only "$bin" | awk '{print $3}' | LC_ALL=C sort) | wc -l)
  if ((present * 10 >= listed * 9)); then
    log "link order: $present of $listed listed functions in braid-proxy"
  else
    log "WARNING: proxy/link-order.txt is stale: only $present of its $listed functions are in $bin," \
      "so the sidecar maps more of its binary; run 'make link-order' (and 'make pgo' first) and commit the files"
  fi
fi

# Where the images go. The local cluster's registry: braid.dev/NAME:TAG as REGISTRY/NAME:TAG, which the node
# pulls as braid.dev/NAME:TAG (its mirror), checked against the cluster CA. Or --push-to's repository.
CTR=()
if [ "$push" = 1 ]; then
  if [ -n "$push_to" ]; then
    # crane alone (not the cluster's tools), from its Go module on first use.
    crane_bin=$(bash "$ROOT/e2e/cluster/build-tools.sh" crane | tail -n 1)/crane
    [ -x "$crane_bin" ] || die "crane could not be built (see above); it needs Go 1.26+"
    # The CA goes to crane alone: in cargo's environment it would make every build script run again.
    if [ -n "${REGISTRY_CA:-}" ]; then
      [ -f "$REGISTRY_CA" ] || die "REGISTRY_CA=$REGISTRY_CA is not a file"
      crane() { SSL_CERT_FILE=$REGISTRY_CA "$crane_bin" "$@"; }
    else
      crane() { "$crane_bin" "$@"; }
    fi
    destination=$push_to
  else
    registry=$($CLUSTER registry 2>/dev/null) ||
      die "the local cluster's registry does not answer: start the cluster (make cluster-up), push elsewhere with --push-to REPO, or build only with --no-push"
    { read -r destination; read -r registry_ca; read -r crane_bin; read -r hosts_dir; } <<<"$registry"
    crane() { SSL_CERT_FILE=$registry_ca NO_PROXY=${destination%:*} no_proxy=${destination%:*} "$crane_bin" "$@"; }
    read -r -a CTR <<<"$CLUSTER ctr"
  fi
fi
# NAME's reference under TAG where this run pushes it.
pushed_ref() {
  if [ -n "$push_to" ]; then echo "$push_to/${1##*/}:$2"; else echo "$destination/${1#braid.dev/}:$2"; fi
}

# Labels: the commit (marked -dirty with local changes), and the workspace's `repository` and `license`
# from Cargo.toml (the source label is left out while Cargo.toml names no repository).
REVISION=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] || REVISION+=-dirty
SOURCE=$(sed -n 's/^repository = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
LICENSE=$(sed -n 's/^license = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
mkdir -p "$CACHE/.deps"
for name in "${names[@]}"; do
  package=$(sed -n 's/^PACKAGE=//p' "$CONF_DIR/$name.conf")
  dependency_list "$package" >"$CACHE/.deps/$package" || die "cargo tree -p $package failed"
  [ -s "$CACHE/.deps/$package" ] || die "cargo tree -p $package listed no crates"
done

mkdir -p "$CACHE"
summary=()
for name in "${names[@]}"; do
  (
    # shellcheck source=/dev/null
    . "$CONF_DIR/$name.conf"
    work=$(mktemp -d "$CACHE/.$name.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    make_rootfs "$work/rootfs"
    inputs=$(inputs_hash "$work/rootfs")
    state=cached
    if [ ! -f "$CACHE/$name.tar" ] || [ "$(cat "$CACHE/$name.inputs" 2>/dev/null)" != "$inputs" ]; then
      t0=$SECONDS
      build_archive "$name" "$work" "$inputs"
      echo "$inputs" >"$CACHE/$name.inputs"
      state="built in $((SECONDS - t0)) s"
    fi
    digest=$(archive_digest "$CACHE/$name.tar")
    rootfs_size=$(du -sb "$work/rootfs" | cut -f1)
    archive_size=$(stat -c %s "$CACHE/$name.tar")
    pushed="" tags=""
    if [ "$push" = 1 ]; then
      [ -n "$push_to" ] && tags=$APP_VERSION || tags=$TAGS
      first=${tags%% *}
      first_ref=$(pushed_ref "$REPOSITORY" "$first")
      stale=0
      for tag in $tags; do [ "$(remote_digest "$(pushed_ref "$REPOSITORY" "$tag")")" = "$digest" ] || stale=1; done
      if [ "$stale" = 1 ]; then
        mkdir -p "$work/layout"
        tar -C "$work/layout" -xf "$CACHE/$name.tar"
        crane push "$work/layout" "$first_ref" >"$work/push.log" 2>&1 || {
          cat "$work/push.log" >&2
          die "pushing $CACHE/$name.tar to $first_ref failed"
        }
        for tag in ${tags#"$first"}; do
          crane tag "$first_ref" "$tag" >>"$work/push.log" 2>&1 ||
            die "tagging $first_ref as $tag failed: $(cat "$work/push.log")"
        done
        for tag in $tags; do
          [ "$(remote_digest "$(pushed_ref "$REPOSITORY" "$tag")")" = "$digest" ] ||
            die "$(pushed_ref "$REPOSITORY" "$tag") is not $digest after the push"
        done
        pushed=", pushed"
      else
        pushed=", already pushed"
      fi
      [ -n "$push_to" ] || echo "$digest" >"$CACHE/$name.digest"
    fi
    # What was pushed where: with --push-to, REPO/NAME:VERSION; else each tag's braid.dev name.
    shown=$REPOSITORY
    [ -z "$push_to" ] || shown=$push_to/${REPOSITORY##*/}
    for tag in ${tags:-$TAGS}; do
      printf '%-44s %9s (files %s, archive %s) %s%s\n' "$shown:$tag" "${digest:7:12}" \
        "$(human "$rootfs_size")" "$(human "$archive_size")" "$state" "$pushed"
    done >"$CACHE/.$name.summary"
  )
  summary+=("$(cat "$CACHE/.$name.summary")")
  rm -f "$CACHE/.$name.summary"
done

printf '%s\n' "${summary[@]}"

# Helm values that pin the chart's images to the digests last pushed to the local cluster's registry, so
# that a release installed or upgraded with them runs exactly these builds (a :dev tag would not say).
if [ "$push" = 1 ] && [ -z "$push_to" ]; then
  {
    echo "# Written by images/build.sh: the images last pushed to the local cluster's registry."
    echo "image:"
    echo "  digests:"
    for pair in operator:braid-operator webhook:braid-webhook proxy:braid-proxy; do
      [ ! -f "$CACHE/${pair#*:}.digest" ] || echo "    ${pair%%:*}: $(cat "$CACHE/${pair#*:}.digest")"
    done
  } >"$DIGESTS_VALUES"
fi

[ "$push" = 1 ] && [ -z "$push_to" ] && [ "$check" = 1 ] || exit 0

# --- check: the node pulls each image by name, and its binaries run under containerd -------------
for name in "${names[@]}"; do
  (
    # shellcheck source=/dev/null
    . "$CONF_DIR/$name.conf"
    for tag in $TAGS; do
      output=$("${CTR[@]}" images pull --hosts-dir "$hosts_dir" "$REPOSITORY:$tag" 2>&1) ||
        die "the node could not pull $REPOSITORY:$tag from its registry: $output"
    done
  )
done
log "the node pulled every image from $destination"

check_id() { echo "braid-images-check-$$-$1"; }
# The check containers' cgroup parent, which `make cluster-down` removes (ctr's default, /k8s.io, would
# outlive the cluster).
CHECK_CGROUP=/braid-images-check
run_in() {
  local image=$1 id
  id=$(check_id "$RANDOM")
  shift
  "${CTR[@]}" run --rm --net-host --cgroup "$CHECK_CGROUP/$id" "$image" "$id" "$@"
}
check_image() {
  local image=$1 expected=$2 output
  shift 2
  if ! output=$(run_in "$image" "$@" 2>&1); then
    # Seen when containerd runs with umask 077: it creates each container's root directory 0700,
    # so a non-root user cannot reach /lib (the loader and the kernel, with capabilities, can).
    [[ $output != *"Permission denied"* ]] ||
      output+=" (is the container's / readable by the image's user? containerd started with umask 077 makes it 0700)"
    die "$image: '$*' failed: $output"
  fi
  [[ $output == *"$expected"* ]] || die "$image: '$*' printed '$output', not '$expected'"
  log "ok  $image: $* -> ${output%%$'\n'*}"
}
# Stops and removes a detached check container.
remove_container() {
  "${CTR[@]}" task kill -s SIGKILL "$1" >/dev/null 2>&1 || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    "${CTR[@]}" task delete "$1" >/dev/null 2>&1 && break
    sleep 0.2
  done
  "${CTR[@]}" container rm "$1" >/dev/null 2>&1 || true
}

# braid-proxy as the pod runs it: the sidecar (as its own user) in a network namespace, and
# `braid-proxy init` as root beside it installing the redirect with the image's iptables.
check_proxy_init() {
  local image=$1 netns id output
  netns=braid-images-check-$$
  id=$(check_id proxy)
  ip netns add "$netns" || die "cannot create network namespace $netns"
  # shellcheck disable=SC2064 # expand now: these are the names to clean up
  trap "remove_container $id; ip netns delete $netns 2>/dev/null || true" RETURN
  "${CTR[@]}" run -d --null-io --privileged --cgroup "$CHECK_CGROUP/$id" --with-ns "network:/var/run/netns/$netns" "$image" "$id" >/dev/null ||
    die "$image: the proxy did not start"
  output=$("${CTR[@]}" task exec --user 0 --exec-id init "$id" braid-proxy init --proxy-uid 2102 \
    --inbound-port 4143 --outbound-port 4140 2>&1) || die "$image: braid-proxy init failed: $output"
  output=$("${CTR[@]}" task exec --user 0 --exec-id save "$id" iptables-save -t nat 2>&1) ||
    die "$image: iptables-save failed: $output"
  [[ $output == *"-A BRAID_OUTPUT -m owner --uid-owner 2102 -j RETURN"* ]] ||
    die "$image: braid-proxy init did not install the redirect: $output"
  "${CTR[@]}" task ls | grep -q "^$id .*RUNNING" || die "$image: the proxy is not running"
  log "ok  $image: braid-proxy runs, and braid-proxy init (root) installed the redirect with iptables-restore"
}

# echo serves, and load counts its answers, over the host's loopback.
check_testapps() {
  local image=$1 id port output
  id=$(check_id echo)
  port=$(( 20000 + RANDOM % 20000 ))
  # shellcheck disable=SC2064
  trap "remove_container $id" RETURN
  "${CTR[@]}" run -d --null-io --net-host --cgroup "$CHECK_CGROUP/$id" --env APP_NAME=check --env APP_VERSION=v1 "$image" "$id" \
    /usr/local/bin/echo --listen "127.0.0.1:$port" >/dev/null || die "$image: echo did not start"
  sleep 0.5
  output=$(run_in "$image" load --url "http://127.0.0.1:$port/" --rate 20 --duration 1s --json 2>/dev/null) ||
    die "$image: load failed: $output"
  [[ $output == *'"ok": 20'* && $output == *'"check@v1": 20'* ]] ||
    die "$image: load did not get 20 answers from echo: $output"
  log "ok  $image: load got 20 of 20 answers from echo"
}

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
for name in "${names[@]}"; do
  (
    # shellcheck source=/dev/null
    . "$CONF_DIR/$name.conf"
    image=$REPOSITORY:${TAGS%% *}
    for binary in $BINARIES; do
      check_image "$image" "$binary $version" "/usr/local/bin/$binary" --version
    done
    if [ "$IPTABLES" = 1 ]; then
      for command in iptables-restore iptables-save iptables-legacy-restore iptables-nft-restore; do
        check_image "$image" "v1." "$command" --version
      done
      if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
        check_proxy_init "$image"
      else
        log "skipped braid-proxy init under containerd: needs root and ip (iproute2)"
      fi
    fi
    if [ "$name" = braid-testapps ]; then check_testapps "$image"; fi
  )
done
log "every image runs"
