#!/usr/bin/env bash
# Fetches the guest kernel of microVM capsules from Debian's cloud kernel
# package (bookworm's linux-image-cloud-amd64) and caches it machine-wide.
# The package is downloaded with `apt-get download` and unpacked with
# `dpkg-deb -x`: it is never installed on the host. Prints the cache
# directory on stdout and nothing else; progress goes to stderr. A cached
# kernel returns at once (also offline).
#
# The directory holds:
#   vmlinuz       the bzImage QEMU boots (-kernel)
#   vmlinux       the same kernel as an uncompressed ELF (what Firecracker boots)
#   config        the kernel's build configuration
#   modules/      the modules the guest needs (virtio mmio/blk/net/balloon,
#                 vsock, overlayfs), flat, and modules/order: their load order
#   version       the kernel release (uname -r)
# The driver (internal/runtime/vm) adds its init, busybox and envd to make
# the initramfs.
#
#   GUEST_KERNEL_CACHE  cache root (default /var/cache/wrenn/guest-kernel)
#   GUEST_KERNEL_PKG    meta package (default linux-image-cloud-amd64)
set -euo pipefail

cache=${GUEST_KERNEL_CACHE:-/var/cache/wrenn/guest-kernel}
meta=${GUEST_KERNEL_PKG:-linux-image-cloud-amd64}
# Load order: each module after the ones it depends on (modinfo depends).
modules=(virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net
  virtio_balloon vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport overlay)

log() { echo "guest-kernel.sh: $*" >&2; }

complete() { [[ -s $1/vmlinuz && -s $1/vmlinux && -s $1/modules/order && -s $1/version ]]; }

newest_cached() {
  local d
  for d in $(ls -1d "$cache"/*/ 2>/dev/null | sort -rV); do
    d=${d%/}
    if complete "$d"; then echo "$d"; return 0; fi
  done
  return 1
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

# The kernel package the meta package points at (e.g.
# linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)).
dep=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [[ -z $dep ]]; then
  if d=$(newest_cached); then echo "$d"; exit 0; fi
  log "apt-cache knows no $meta (run apt-get update) and nothing is cached in $cache"
  exit 1
fi
ver=$(apt-cache policy "$dep" | awk '/Candidate:/ {print $2}')
dir=$cache/$dep-$ver
if complete "$dir"; then echo "$dir"; exit 0; fi

log "fetching $dep $ver (not installed: apt-get download + dpkg-deb -x)"
work=$(mktemp -d "$cache/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -q "$dep=$ver" >&2 2>/dev/null) || (cd "$work" && apt-get download "$dep=$ver" >&2)
dpkg-deb -x "$work"/*.deb "$work/x"
release=$(ls "$work/x/lib/modules")
mkdir -p "$work/out/modules"
cp "$work/x/boot/vmlinuz-$release" "$work/out/vmlinuz"
cp "$work/x/boot/config-$release" "$work/out/config"
echo "$release" >"$work/out/version"
for m in "${modules[@]}"; do
  f=$(find "$work/x/lib/modules/$release" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" | head -1)
  [[ -n $f ]] || { log "module $m missing from $dep"; exit 1; }
  case $f in
    *.xz) xz -dc "$f" >"$work/out/modules/$m.ko" ;;
    *.zst) zstd -qdc "$f" >"$work/out/modules/$m.ko" ;;
    *) cp "$f" "$work/out/modules/$m.ko" ;;
  esac
  echo "$m.ko" >>"$work/out/modules/order"
done

# vmlinux: the bzImage's payload is a compressed ELF; find its compression
# magic and decompress from there (what the kernel's extract-vmlinux does).
extract() { # magic(grep -P) decompressor...
  local magic=$1 off
  shift
  for off in $(LC_ALL=C grep -aboP "$magic" "$work/out/vmlinuz" | cut -d: -f1); do
    tail -c +$((off + 1)) "$work/out/vmlinuz" | "$@" >"$work/out/vmlinux" 2>/dev/null || true
    if [[ $(head -c 4 "$work/out/vmlinux" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then return 0; fi
  done
  return 1
}
extract '\x02\x21\x4c\x18' lz4 -dc ||
  extract '\x28\xb5\x2f\xfd' zstd -qdc ||
  extract '\xfd\x37\x7a\x58\x5a\x00' xz -dc ||
  extract '\x1f\x8b\x08' gzip -dc ||
  { log "cannot extract vmlinux from $dep's bzImage"; exit 1; }

rm -rf "$dir"
mv "$work/out" "$dir"
log "cached $release in $dir"
echo "$dir"
