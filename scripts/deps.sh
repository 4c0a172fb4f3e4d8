#!/usr/bin/env bash
# Installs the Debian packages Wrenn needs to build, run and test, skipping
# what is already there. Safe to run repeatedly; needs root on Debian 12.
set -euo pipefail

want=(
  ca-certificates git make gcc      # build
  runc iproute2 nftables e2fsprogs  # container runtime driver
  qemu-system-x86 lz4 cpio          # microVM driver (QEMU; guest kernel vmlinux; initramfs test)
  util-linux kmod procps psmisc     # losetup, mount, ps, fuser
  tar file passwd                   # template import, tests (useradd)
  busybox-static debootstrap        # templates
  lxcfs                             # capsules see their own memory, CPUs, uptime
  postgresql                        # store tests on PostgreSQL
  chromium                          # dashboard browser tests (playwright-core)
)
# Python SDK (sdk/python): its tests and wheel build run on Debian's packages
# under /usr/bin/python3.
want+=(python3-httpx python3-websockets python3-pytest python3-yaml python3-build python3-hatchling)

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# node/npm (E2B SDK compatibility test): any install will do, Debian's or another.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  missing+=(nodejs npm)
fi

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
