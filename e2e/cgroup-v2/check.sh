#!/usr/bin/env bash
# The local cluster's node on cgroup v2 (unified), on a machine whose own kernel mounts cgroup v1: a
# virtual machine (QEMU, with KVM where it runs a guest, else emulated) boots Debian's kernel with the v1 hierarchies disabled
# (cgroup_no_v1=all), its root filesystem this machine's own (read-only over 9p, with a writable layer
# in memory on top), so it runs the very binaries and scripts `make cluster-up` runs here. Inside,
# e2e/cgroup-v2/guest.sh starts the cluster, runs the node's end-to-end test and pods with resource
# limits, takes the cluster down and checks what is left. Prints the guest's console; exits 0 when the
# guest reports PASSED.
#
# Needs root, and what `make cluster-up` needs built already (the Kubernetes binaries in the
# tools cache, and the node test: cargo test -p braid-e2e --no-run). Installs qemu-system-x86 (Debian)
# and downloads Debian's kernel package once, into ${XDG_CACHE_HOME:-~/.cache}/braid/cgroup-v2.
#
# Usage: e2e/cgroup-v2/check.sh
# Environment: BRAID_VM_MEMORY (MiB, default 6144), BRAID_VM_CPUS (default: this machine's cores),
#              CARGO_TARGET_DIR (where the node test was built; default target/)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/braid/cgroup-v2
KERNEL_PACKAGE=linux-image-amd64
MEMORY=${BRAID_VM_MEMORY:-6144}
CPUS=${BRAID_VM_CPUS:-$(nproc)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

log() { printf 'cgroup-v2: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

[ "$(id -u)" = 0 ] || die "needs root, as the local cluster does"
[ "$(uname -m)" = x86_64 ] || die "Debian's amd64 kernel runs on x86_64 only, not $(uname -m)"
command -v qemu-system-x86_64 >/dev/null || {
  log "installing qemu-system-x86 (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86 >/dev/null ||
    die "apt-get install qemu-system-x86 failed"
}
command -v busybox >/dev/null || die "needs busybox-static (make deps installs it)"

# What the guest runs: the node's end-to-end test, built by cargo test -p braid-e2e --no-run.
node_test=$(find "$TARGET/debug/deps" -maxdepth 1 -type f -executable -name 'node-*' -printf '%T@ %p\n' 2>/dev/null |
  sort -n | tail -n 1 | cut -d' ' -f2)
[ -n "$node_test" ] || die "no node test in $TARGET/debug/deps: build it with 'cargo test -p braid-e2e --no-run'"
tools=$(bash "$ROOT/e2e/cluster/build-tools.sh" --cluster | tail -n 1)

# Debian's kernel, unpacked (not installed: this machine boots its own).
mkdir -p "$CACHE"
version=$(apt-cache depends "$KERNEL_PACKAGE" 2>/dev/null | sed -n 's/^ *Depends: linux-image-\(.*\)$/\1/p' | head -n 1)
[ -n "$version" ] || die "apt knows no $KERNEL_PACKAGE: run apt-get update"
KERNEL=$CACHE/kernel-$version
if [ ! -f "$KERNEL/lib/modules/$version/modules.dep" ]; then
  log "downloading Debian's kernel $version"
  rm -rf "$KERNEL" "$CACHE"/*.deb
  (cd "$CACHE" && apt-get download "linux-image-$version" >/dev/null 2>&1) ||
    die "apt-get download linux-image-$version failed"
  dpkg-deb -x "$CACHE"/linux-image-"$version"_*.deb "$KERNEL"
  rm -f "$CACHE"/*.deb
  busybox depmod -b "$KERNEL" "$version"
fi

# The initramfs: busybox, the modules that reach this machine's root over 9p and lay the writable layer
# over it, and /init, which mounts them and hands over to guest.sh.
initrd=$CACHE/initrd-$version.gz
if [ ! -f "$initrd" ] || [ "$0" -nt "$initrd" ]; then
  work=$(mktemp -d)
  mkdir -p "$work"/{bin,dev,proc,sys,lower,rw,newroot,modules}
  cp "$(command -v busybox)" "$work/bin/busybox"
  ln -s busybox "$work/bin/sh"
  # In load order, each after what it depends on: modules.dep lists a module's dependencies, the
  # ones loaded first last.
  modules=()
  for module in virtio_pci 9pnet_virtio 9p overlay; do
    line=$(grep -E "(^|/)$module\.ko(\.[a-z]+)?:" "$KERNEL/lib/modules/$version/modules.dep") ||
      die "the kernel $version has no module $module"
    read -r -a parts <<<"${line/:/}"
    for ((i = ${#parts[@]} - 1; i >= 0; i--)); do
      [[ " ${modules[*]} " == *" ${parts[i]} "* ]] || modules+=("${parts[i]}")
    done
  done
  for file in "${modules[@]}"; do
    cp "$KERNEL/lib/modules/$version/$file" "$work/modules/"
  done
  modules=("${modules[@]##*/}")
  cat >"$work/init" <<EOF
#!/bin/sh
export PATH=/bin
busybox mount -t proc proc /proc
busybox mount -t sysfs sysfs /sys
busybox mount -t devtmpfs devtmpfs /dev
for module in ${modules[*]}; do busybox insmod /modules/\$module || echo "init: insmod \$module failed"; done
busybox mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=1048576,cache=loose hostroot /lower ||
  { echo "init: cannot mount the host's root over 9p"; busybox poweroff -f; }
busybox mount -t tmpfs -o size=75% tmpfs /rw
busybox mkdir -p /rw/upper /rw/work
busybox mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
  { echo "init: cannot mount the overlay root"; busybox poweroff -f; }
for dir in proc sys dev; do busybox mount --move /\$dir /newroot/\$dir; done
exec busybox switch_root /newroot /bin/bash "$ROOT/e2e/cgroup-v2/guest.sh"
EOF
  chmod +x "$work/init"
  (cd "$work" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$work"
fi

# KVM where it runs a guest: nested virtualisation may offer /dev/kvm and still never run one (the
# kernel prints nothing). Else QEMU's emulation (TCG), a few times slower.
if [ -w /dev/kvm ] && timeout 30 qemu-system-x86_64 -enable-kvm -cpu host -m 256 -nographic -no-reboot -nic none \
  -kernel "$KERNEL/boot/vmlinuz-$version" -append "console=ttyS0 panic=-1" </dev/null 2>&1 | grep -q 'Linux version'; then
  accel=(-enable-kvm -cpu host)
else
  log "KVM does not run a guest here (no /dev/kvm, or no kernel output within 30 s): emulating the CPU (TCG)"
  accel=(-accel tcg -cpu max)
fi

console=$(mktemp /tmp/braid-cgroup-v2.XXXXXX.log)
log "booting Debian's kernel $version with cgroup v2 only (${accel[1]}, $CPUS CPUs, $MEMORY MiB); console in $console"
t0=$SECONDS
# The guest's arguments travel on the kernel command line; guest.sh reads braid.* from /proc/cmdline.
qemu-system-x86_64 "${accel[@]}" -smp "$CPUS" -m "$MEMORY" -nographic -no-reboot \
  -kernel "$KERNEL/boot/vmlinuz-$version" -initrd "$initrd" \
  -append "console=ttyS0 quiet panic=-1 cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1 braid.modules=$KERNEL/lib/modules braid.tools=$tools braid.test=$node_test braid.cache=${XDG_CACHE_HOME:-$HOME/.cache}" \
  -virtfs "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap" \
  -nic none </dev/null 2>&1 | tee "$console" | sed -u 's/^/guest: /' >&2 || true
log "the guest ran for $((SECONDS - t0)) s"
grep -q '^cgroup-v2-check: PASSED' "$console" || die "the guest did not pass; its console is in $console"
log "PASSED: the node ran on cgroup v2 (console in $console)"
