# Wrenn — one Makefile for build, run, test, generate, lint and benchmarks.
# Quick start (Debian 12, as root):  make run   |   make test
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

GO      ?= go
TOOL    := $(GO) tool -modfile=tools/go.mod
PKG     := github.com/wrenn-dev/wrenn
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -s -w -X $(PKG)/internal/envd.Version=$(VERSION) -X $(PKG)/internal/envd.Commit=$(COMMIT) \
           -X $(PKG)/internal/buildinfo.Version=$(VERSION) -X $(PKG)/internal/buildinfo.Commit=$(COMMIT)
BIN     := bin
# Test packages run twice: once plainly (all tests), once under the race
# detector in -short mode (heavy data tests scale down there).
TESTFLAGS ?= -count=1 -timeout 25m


.PHONY: web test-web templates build run test test-go test-heavy test-gvisor chaos load deps tools gen gen-check lint vet fmt bench clean envd wrenn

build: web envd wrenn

# The dashboard (web/): built with npm into internal/web/dist, which wrenn
# embeds. node_modules is reused while package-lock.json is unchanged.
web: web/node_modules/.package-lock.json
	cd web && npm run build

web/node_modules/.package-lock.json: web/package-lock.json
	cd web && npm ci --no-audit --no-fund

envd:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/envd ./cmd/envd
	@size=$$(stat -c %s $(BIN)/envd); if ((size > 20*1024*1024)); then echo "envd is $$size bytes (> 20 MiB)"; exit 1; fi
	@if ldd $(BIN)/envd >/dev/null 2>&1; then echo "envd is not statically linked"; exit 1; fi

wrenn:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/wrenn ./cmd/wrenn

deps:
	@scripts/deps.sh

# Test-only programs installed from the Go module proxy into bin/tools.
VERSITYGW_VERSION := v1.8.0
tools: bin/tools/versitygw

bin/tools/versitygw:
	GOBIN=$(CURDIR)/bin/tools $(GO) install github.com/versity/versitygw/cmd/versitygw@$(VERSITYGW_VERSION)

# The shipped templates: minimal (busybox, seconds) and base (Debian bookworm
# via debootstrap, cached in /var/cache/wrenn). `wrenn up` builds them too.
WRENN_HOME ?= /var/lib/wrenn
templates: deps wrenn
	$(BIN)/wrenn template prepare minimal --home $(WRENN_HOME)
	$(BIN)/wrenn template prepare base --home $(WRENN_HOME)

run: deps build
	@scripts/run.sh $(ARGS)

gen:
	$(TOOL) buf generate
	$(TOOL) sqlc generate
	$(TOOL) oapi-codegen -config pkg/wrennapi/oapi-codegen.yaml internal/api/openapi.yaml
	$(GO) generate ./internal/store/postgres/

GENERATED := proto internal/store/postgres/pgdb internal/store/sqlite/sqlitedb internal/store/postgres/store.go pkg/wrennapi
# CI fails when the checked-in generated tree differs from a fresh `make gen`.
gen-check: gen
	@if [[ -n "$$(git status --porcelain -- $(GENERATED))" ]]; then \
	  echo "generated code is stale: run 'make gen' and commit the result"; git status --porcelain -- $(GENERATED); exit 1; fi

vet:
	$(GO) vet ./...

lint:
	$(TOOL) golangci-lint run ./...

fmt:
	$(TOOL) gofumpt -w $$(git ls-files '*.go' | grep -v '^proto/')

# Tests need: root (namespaces, cgroups, mounts), a local PostgreSQL (started
# by scripts/postgres.sh), versitygw (S3 tests), node/npm (E2B SDK check) and
# a CRIU that works on this kernel (built from Debian's source package by
# scripts/criu.sh, cached in /var/cache/wrenn/criu; memory-snapshot tests)
# and gVisor's runsc (built statically from the Go module proxy by
# scripts/runsc.sh, cached in /var/cache/wrenn/runsc; the gVisor tests).
# A CRIU that cannot be built fails the run: tests never skip silently (the
# one allowed skip is a missing /dev/kvm).
test-go: tools
	export PATH="$(CURDIR)/bin/tools:$$PATH"; \
	export WRENN_TEST_POSTGRES_DSN="$${WRENN_TEST_POSTGRES_DSN:-$$(scripts/postgres.sh)}"; \
	case "$$WRENN_TEST_POSTGRES_DSN" in postgres://*[!\ ]) ;; *) \
	  echo "make test: scripts/postgres.sh gave no usable DSN: '$$WRENN_TEST_POSTGRES_DSN'" >&2; exit 1;; esac; \
	if [ -z "$${WRENN_TEST_CRIU:-}" ]; then \
	  WRENN_TEST_CRIU="$$(scripts/criu.sh)" || { \
	    echo "make test: building CRIU failed (scripts/criu.sh): the memory-snapshot tests cannot run; fix the build or set WRENN_TEST_CRIU to a working criu" >&2; exit 1; }; \
	fi; \
	if [ ! -x "$$WRENN_TEST_CRIU" ]; then \
	  echo "make test: WRENN_TEST_CRIU='$$WRENN_TEST_CRIU' is not an executable criu" >&2; exit 1; fi; \
	export WRENN_TEST_CRIU; \
	if [ -z "$${WRENN_TEST_GUEST_KERNEL:-}" ]; then \
	  WRENN_TEST_GUEST_KERNEL="$$(scripts/guest-kernel.sh)" || { \
	    echo "make test: preparing the microVM guest kernel failed (scripts/guest-kernel.sh): the microVM driver tests cannot run" >&2; exit 1; }; \
	fi; \
	export WRENN_TEST_GUEST_KERNEL; \
	if [ -z "$${WRENN_TEST_RUNSC:-}" ]; then \
	  WRENN_TEST_RUNSC="$$(scripts/runsc.sh)" || { \
	    echo "make test: building runsc failed (scripts/runsc.sh): the gVisor tests cannot run; fix the build or set WRENN_TEST_RUNSC to a static runsc" >&2; exit 1; }; \
	fi; \
	if [ ! -x "$$WRENN_TEST_RUNSC" ]; then \
	  echo "make test: WRENN_TEST_RUNSC='$$WRENN_TEST_RUNSC' is not an executable runsc" >&2; exit 1; fi; \
	export WRENN_TEST_RUNSC; \
	start=$$(date +%s); \
	$(GO) test $(TESTFLAGS) ./...; \
	echo "make test: all packages took $$(( $$(date +%s) - start )) s"; \
	start=$$(date +%s); \
	$(GO) test $(TESTFLAGS) -race -short $$($(GO) list ./... | grep -v -E '$(PRIVILEGED_PKGS)'); \
	echo "make test: race pass (unit packages) took $$(( $$(date +%s) - start )) s"

# Packages that run capsules, agents or wrenn up: the race pass (unit
# packages only, as the brief asks) leaves them out.
PRIVILEGED_PKGS := /internal/(runtime/container|runtime/vm|hostagent|up|controlplane|network|cli|fleet)$$|/test/|/sdk$$

# The dashboard's unit tests (vitest); its browser test is test/dashboard (go test).
test-web: web/node_modules/.package-lock.json
	cd web && npm test

test: deps gen-check vet lint build test-web test-go

# Heavier suites outside `make test`: the container workload suite with a
# compiler, Node.js, a JDK, sqlite3 and strace from Debian's packages (a
# template on top of base, built once and cached in /var/cache/wrenn).
test-heavy: deps build
	$(GO) test -tags heavy -count=1 -timeout 40m -run 'TestWorkloads|TestSeccomp|TestLXCFS' ./internal/runtime/container/

# The gVisor suites alone (they also run in `make test`; docs/GVISOR.md).
test-gvisor: deps build
	WRENN_TEST_RUNSC="$${WRENN_TEST_RUNSC:-$$(scripts/runsc.sh)}" $(GO) test -count=1 -timeout 25m -v -run 'TestGVisor|TestIsolationsRouter' ./internal/runtime/container/

# `wrenn bench` against a `wrenn up` of its own (scripts/wrenn-bench.sh;
# BENCH_ARGS=--quick for a one-minute run), then the Go benchmarks.
bench: deps build
	@scripts/wrenn-bench.sh $(BENCH_ARGS)
	@scripts/bench.sh

# The fleet's chaos and load suites in full (issue 24; docs/OPERATIONS.md):
# make test runs them reduced (2 hosts, one round of faults / 8 clients for 20 s).
chaos: deps build tools
	PATH="$(CURDIR)/bin/tools:$$PATH" WRENN_TEST_POSTGRES_DSN="$${WRENN_TEST_POSTGRES_DSN:-$$(scripts/postgres.sh)}" \
	  $(GO) test -count=1 -timeout 40m -v -run 'TestChaos' ./internal/fleet/ -args -fleet.full

load: deps build tools
	PATH="$(CURDIR)/bin/tools:$$PATH" WRENN_TEST_POSTGRES_DSN="$${WRENN_TEST_POSTGRES_DSN:-$$(scripts/postgres.sh)}" \
	  $(GO) test -count=1 -timeout 30m -v -run 'TestLoad' ./internal/fleet/ -args -fleet.full

clean:
	rm -rf $(BIN)
