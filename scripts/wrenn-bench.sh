#!/usr/bin/env bash
# `make bench` (first part): start a `wrenn up` of its own (instance
# wbench, subnet 10.70.0.0/16, warm pools at their default), wait for the
# base template, run `wrenn bench` against it and stop it (capsules
# destroyed). Arguments go to `wrenn bench` (e.g. --quick, --json).
# Run it alone on the machine (it takes the privileged-test lock).
# WRENN_UP_ARGS adds flags to `wrenn up` (e.g. "--log-level debug
# --pprof-listen 127.0.0.1:6060"); WRENN_UP_LOG keeps its log there.
# WRENN_BENCH_SUBNET / WRENN_BENCH_INSTANCE override the subnet and
# instance (to run beside another `wrenn up` on the same machine).
set -euo pipefail
cd "$(dirname "$0")/.."
wrenn=${WRENN_BIN:-$PWD/bin/wrenn}
home=$(mktemp -d /tmp/wrenn-bench-home.XXXXXX)
log=$home/up.log
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Memory snapshots (pause to disk keeping memory) need the patched CRIU.
export WRENN_CRIU="${WRENN_CRIU:-$(scripts/criu.sh)}"
exec 9>/tmp/wrenn-priv.lock
flock 9
"$wrenn" up --home "$home" --listen "127.0.0.1:$port" --proxy-listen "127.0.0.1:$pport" \
  --instance "${WRENN_BENCH_INSTANCE:-wbench}" --subnet "${WRENN_BENCH_SUBNET:-10.70.0.0/16}" --on-exit destroy --envd-path "$PWD/bin/envd" ${WRENN_UP_ARGS:-} >"$log" 2>&1 &
up=$!
stop() {
  kill -INT "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  if [[ -n "${WRENN_UP_LOG:-}" ]]; then cp "$log" "$WRENN_UP_LOG"; fi
  rm -rf "$home"
}
trap stop EXIT
for _ in $(seq 1 1200); do
  grep -q "Wrenn is up" "$log" && break
  kill -0 "$up" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
key=$(cat "$home/admin.key")
url="http://127.0.0.1:$port"
# Wait for the base template (built in the background; cached machine-wide).
for _ in $(seq 1 3600); do
  WRENN_CONFIG="$home/client.json" "$wrenn" template ls --url "$url" --api-key "$key" 2>/dev/null | grep -qw base && break
  kill -0 "$up" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 1
done
sleep "${WRENN_BENCH_SETTLE:-5}" # the warm pools fill
WRENN_CONFIG="$home/client.json" "$wrenn" bench --url "$url" --api-key "$key" "$@"
