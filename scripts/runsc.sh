#!/usr/bin/env bash
# Builds gVisor's runsc from Go's module proxy as a static binary and caches
# it machine-wide. A dynamically linked runsc fails at sandbox start ("fork/
# exec /proc/self/exe: no such file or directory"), hence CGO_ENABLED=0.
# Prints the binary's path on stdout and nothing else; progress goes to
# stderr. A cached build returns at once.
#
#   RUNSC_VERSION  gvisor.dev/gvisor module version (default: the pinned
#                  pseudo-version below, what @latest resolved to on
#                  2026-12-07)
#   RUNSC_CACHE    cache root (default /var/cache/wrenn/runsc)
#
# What it changes on the host: $RUNSC_CACHE/<version>/runsc (and the Go
# module and build caches of the user running it).
set -euo pipefail

version=${RUNSC_VERSION:-v0.0.0-20260905035102-160fafc42237}
cache=${RUNSC_CACHE:-/var/cache/wrenn/runsc}
bin=$cache/$version/runsc

log() { echo "runsc.sh: $*" >&2; }

# A usable cached build: it runs, and it is static (no program interpreter).
cached() {
  [[ -x $bin ]] && "$bin" --version >/dev/null 2>&1 && ! file -b "$bin" | grep -q 'dynamically linked'
}

if cached; then
  echo "$bin"
  exit 0
fi
if ! command -v go >/dev/null; then
  log "go is not installed: building runsc needs the Go toolchain"
  exit 1
fi
mkdir -p "$cache" 2>/dev/null || {
  log "cannot create $cache (run as root or set RUNSC_CACHE)"
  exit 1
}
# One build at a time on this machine; a second caller waits and then finds
# the cached binary.
exec 9>"$cache/.lock"
flock 9
if cached; then
  echo "$bin"
  exit 0
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "building gvisor.dev/gvisor/runsc@$version (CGO_ENABLED=0) ..."
start=$(date +%s)
# GOFLAGS is cleared so a project's -mod setting cannot interfere; GOBIN
# puts the binary in the work directory, published by rename below.
if ! (cd "$work" && GOFLAGS= CGO_ENABLED=0 GOBIN="$work/bin" go install "gvisor.dev/gvisor/runsc@$version") >"$work/build.log" 2>&1; then
  tail -n 40 "$work/build.log" >&2
  log "build failed"
  exit 1
fi
log "built in $(($(date +%s) - start)) s"
if file -b "$work/bin/runsc" | grep -q 'dynamically linked'; then
  log "the built runsc is dynamically linked; it would fail at sandbox start"
  exit 1
fi
if ! "$work/bin/runsc" --version >&2; then
  log "the built runsc does not run"
  exit 1
fi
mkdir -p "$cache/$version"
install -m 0755 "$work/bin/runsc" "$cache/$version/runsc.tmp"
mv -f "$cache/$version/runsc.tmp" "$bin"
echo "$bin"
