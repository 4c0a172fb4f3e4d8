#!/usr/bin/env bash
# `make run`: start Wrenn on this machine. Until `wrenn up` lands (control
# plane + host agent in one process), this starts envd, the in-capsule agent,
# directly on the host so that it can be driven with E2B-compatible clients.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${ENVD_PORT:-49983}
cat <<MSG
Starting envd on 0.0.0.0:${port} (the in-capsule agent, running on the host).
  health:   curl http://127.0.0.1:${port}/health
  metrics:  curl http://127.0.0.1:${port}/metrics
  upload:   curl -X POST --data-binary @/etc/hostname 'http://127.0.0.1:${port}/files?path=/tmp/hello'
Stop with Ctrl+C.
MSG
exec ./bin/envd --port "${port}"
