#!/usr/bin/env bash
# Builds CRIU from Debian's source package of a newer Debian release than
# the host's and caches the binary machine-wide. Debian 12's CRIU 3.17
# cannot read the vDSO of recent kernels; 4.1.1 (trixie) dumps SO_PASSCRED
# of inet sockets, which kernels >= 6.16 refuse; 4.2.1 (sid) works on this
# 6.18 kernel. Prints the binary's path on stdout and nothing else; progress
# goes to stderr. A cached build returns at once.
#
#   CRIU_VERSION  upstream version to build (default 4.2.1); if the suite
#                 no longer carries it, the suite's newest version >= it
#   CRIU_SUITE    Debian suite whose source index carries it (default sid)
#   CRIU_CACHE    cache root (default /var/cache/wrenn/criu)
#
# Wrenn's patches in scripts/criu-patches/*.patch are applied in name order
# (patch -p1 on the upstream tree). The cache directory is
# <version>+wrenn.<first 12 hex digits of the patches' SHA-256>, so a
# patched build never collides with an unpatched or differently patched
# one; the binary's --version still says the upstream version.
#
# What it changes on the host (root, Debian 12):
#   - /etc/apt/sources.list.d/wrenn-criu-src.sources: a deb-src entry for
#     CRIU_SUITE only, so binary packages keep coming from the host's release;
#   - the -dev packages CRIU links against (from the host's release);
#   - $CRIU_CACHE/<version>/criu.
set -euo pipefail

version=${CRIU_VERSION:-4.2.1}
suite=${CRIU_SUITE:-sid}
cache=${CRIU_CACHE:-/var/cache/wrenn/criu}
patch_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/criu-patches
patches=()
if [[ -d $patch_dir ]]; then
  while IFS= read -r f; do patches+=("$f"); done < <(find "$patch_dir" -maxdepth 1 -name '*.patch' | sort)
fi
suffix=
if ((${#patches[@]})); then
  suffix=+wrenn.$(cat "${patches[@]}" | sha256sum | cut -c1-12)
fi
bin=$cache/$version$suffix/criu

log() { echo "criu.sh: $*" >&2; }

cached() { [[ -x $bin ]] && "$bin" --version 2>/dev/null | grep -qx "Version: $version"; }

if cached; then
  echo "$bin"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  log "building CRIU needs root (apt-get, $cache)"
  exit 1
fi
mkdir -p "$cache"
# One build at a time on this machine; a second caller waits and then finds
# the cached binary.
exec 9>"$cache/.lock"
flock 9
if cached; then
  echo "$bin"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
src_list=/etc/apt/sources.list.d/wrenn-criu-src.sources
want_list="Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
# Only this source's index is refreshed, not the host's other lists.
apt_src_opts=(-o "Dir::Etc::sourcelist=$src_list" -o "Dir::Etc::sourceparts=-" -o "APT::Get::List-Cleanup=0")

has_version() { apt-cache showsrc criu 2>/dev/null | grep -qE "^Version: $version-"; }

if [[ ! -f $src_list ]] || [[ "$(cat "$src_list")" != "$want_list" ]]; then
  log "adding deb-src for $suite ($src_list)"
  printf '%s\n' "$want_list" >"$src_list"
fi
if ! has_version; then
  log "updating the $suite source index"
  apt-get "${apt_src_opts[@]}" update -qq >&2
fi
if ! has_version; then
  # The suite moved on: take its newest version that is at least the
  # requested one (upstream version, without the Debian revision).
  newer=$(apt-cache showsrc criu | awk '/^Version:/ { v = $2; sub(/-[^-]*$/, "", v); print v }' |
    sort -V | tail -n 1)
  if [[ -n $newer ]] && [[ "$(printf '%s\n%s\n' "$version" "$newer" | sort -V | head -n 1)" == "$version" ]]; then
    log "criu $version is no longer in Debian $suite's sources; building $newer"
    version=$newer
    bin=$cache/$version$suffix/criu
    if cached; then
      echo "$bin"
      exit 0
    fi
  else
    log "criu $version is not in Debian $suite's sources; available:"
    apt-cache showsrc criu | grep '^Version:' >&2 || true
    exit 1
  fi
fi

# Build dependencies, from the host's own release (the Debian package's
# Build-Depends minus docs and Python: asciidoc, xmlto, dh-python...).
deps=(gcc make libc6-dev pkgconf protobuf-c-compiler protobuf-compiler libprotobuf-c-dev
  libprotobuf-dev libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev
  libnl-3-dev uuid-dev dpkg-dev xz-utils patch)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing build dependencies: ${missing[*]}"
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; then
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# The full source package (.dsc, orig tarball, Debian patches) when the
# mirror has it; otherwise its upstream tarball alone, checked against the
# SHA-256 in the signed Sources index.
full=$(apt-cache showsrc criu | awk -v v="$version" '
  /^Version:/ { take = index($2, v "-") == 1; if (take) ver = $2 }
  take && /^Checksums-Sha256:/ { sums = 1; next }
  sums && /^ / { if (take) print; next }
  { sums = 0 }
  END { }' | head -n 3)
debver=$(apt-cache showsrc criu | awk -v v="$version" '/^Version:/ && index($2, v "-") == 1 { print $2; exit }')
orig=criu_$version.orig.tar.xz
log "downloading the source of criu $debver"
apt-get source --download-only -qq "criu=$debver" >&2 2>"$work/apt.err" || true
if [[ ! -f $orig ]]; then
  cat "$work/apt.err" >&2
  log "could not download $orig"
  exit 1
fi
want_sum=$(awk -v f="$orig" '$3 == f { print $1 }' <<<"$full")
if [[ -z $want_sum ]] || [[ "$(sha256sum "$orig" | cut -d' ' -f1)" != "$want_sum" ]]; then
  log "$orig does not match the Sources index checksum"
  exit 1
fi
if [[ -f criu_$debver.dsc ]] && dpkg-source -x "criu_$debver.dsc" src >/dev/null 2>&1; then
  log "unpacked the source package with Debian's patches"
else
  log "Debian's .dsc/patches are not on the mirror; building the upstream tarball from the package"
  mkdir src
  tar -xf "$orig" -C src --strip-components=1
fi
for p in "${patches[@]}"; do
  log "applying $(basename "$p")"
  if ! patch -d src -p1 --forward --quiet <"$p" >&2; then
    log "$(basename "$p") does not apply to criu $version"
    exit 1
  fi
done

jobs=$(nproc)
log "building (make -j$jobs criu; no docs, no Python) ..."
start=$(date +%s)
if ! make -C src -j"$jobs" criu >"$work/build.log" 2>&1; then
  tail -n 40 "$work/build.log" >&2
  log "build failed"
  exit 1
fi
log "built in $(($(date +%s) - start)) s"

mkdir -p "$(dirname "$bin")"
install -m 0755 src/criu/criu "$bin.tmp"
if ! "$bin.tmp" --version | grep -qx "Version: $version"; then
  log "the built binary does not report version $version"
  rm -f "$bin.tmp"
  exit 1
fi
mv -f "$bin.tmp" "$bin"
if "$bin" check >/dev/null 2>&1; then
  log "criu check passes on this host"
else
  log "criu check fails on this host (the container driver will keep files only)"
fi
echo "$bin"
