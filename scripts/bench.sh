#!/usr/bin/env bash
# `make bench`: run every benchmark that backs a figure in docs/BENCHMARKS.md.
# Each benchmark measures its own baseline in the same run and prints ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/bin/tools:$PATH"
pkgs=$(go list ./... | while read -r p; do
  d=$(go list -f '{{.Dir}}' "$p")
  if grep -lq '^func Benchmark' "$d"/*_test.go 2>/dev/null; then echo "$p"; fi
done)
# -benchtime=1x for the GiB-sized transfers; the latency benchmarks loop internally.
go test -run '^$' -bench . -benchtime "${BENCHTIME:-1x}" -timeout 60m $pkgs
# test/sdks (BenchmarkSDKs, issue 15) moves a 256 MiB file through each SDK and curl;
# WRENN_SDK_BENCH_MIB=1024 scripts/bench.sh (or go test ./test/sdks/ -run '^$' -bench SDKs) uses 1 GiB.
