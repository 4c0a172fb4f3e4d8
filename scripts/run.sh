#!/usr/bin/env bash
# `make run`: start a complete single-node Wrenn on this machine — control
# plane, host agent and embedded SQLite in one process (`wrenn up`). The
# first start prints an admin API key and a copy-paste example; state lives
# in $WRENN_HOME (default /var/lib/wrenn). Extra flags pass through:
#   make run ARGS="--listen 0.0.0.0:9725 --on-exit destroy"
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $(id -u) -ne 0 ]]; then
  echo "wrenn up runs capsules with namespaces and cgroups: run 'make run' as root" >&2
  exit 1
fi
# Memory snapshots (pause to disk that keeps processes) need a CRIU that
# works on this kernel; Debian 12's does not, so build one once (cached).
# Without it Wrenn still runs: paused capsules then keep their files only.
if [[ -z ${WRENN_CRIU:-} ]]; then
  if WRENN_CRIU=$(scripts/criu.sh); then
    export WRENN_CRIU
  else
    echo "make run: building CRIU failed; pause to disk will keep files but not process memory" >&2
  fi
fi
# The microVM guest kernel (Debian's cloud kernel, cached in
# /var/cache/wrenn/guest-kernel) is prepared in the background, as `wrenn up`
# builds the base template: microVM capsules need it, containers do not.
(scripts/guest-kernel.sh >/dev/null 2>/tmp/wrenn-guest-kernel.log ||
  echo "make run: preparing the microVM guest kernel failed (see /tmp/wrenn-guest-kernel.log)" >&2) &
exec ./bin/wrenn up "$@"
