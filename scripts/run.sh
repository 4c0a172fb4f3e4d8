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
exec ./bin/wrenn up "$@"
