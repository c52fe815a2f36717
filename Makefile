# redisraft-rs. `make help` lists the targets.
SHELL := /bin/bash
CARGO ?= cargo
N ?= 100000

MODULE := $(CURDIR)/redisraft.so
RELEASE_SO := target/release/libredisraft.so
# Integration tests that start servers: the test files that use the harness (tests/common).
SERVER_TESTS = $(foreach f,$(shell grep -l '^mod common;' tests/*.rs 2>/dev/null),--test $(basename $(notdir $(f))))
# The Valkey pass of `make test` runs the single-node, cluster, commands, consistency, security and
# disk-fault suites (the snapshot and chaos suites are long; run them on Valkey with
# `make test-valkey8` or by hand).
VALKEY_TESTS = --test single_node --test cluster --test commands --test consistency --test security --test disk_faults --test dropin --test original_commands --test sharding
# `make cluster GROUPS=3`: that many shard groups (scripts/cluster-start).
GROUPS ?= 1

.PHONY: all build deps probe cluster stop test test-valkey8 bench fmt fmt-check lint clean distclean help

all: build

help:
	@echo "make build        install missing system packages, build ./redisraft.so (release)"
	@echo "make cluster      build, then start a local 3-node cluster on ports 5001-5003"
	@echo "                  (GROUPS=3: three shard groups of 3 nodes, slots split, linked)"
	@echo "make stop         stop that cluster (its data stays in .cluster/)"
	@echo "make test         unit tests + integration tests against redis-server and Valkey 9"
	@echo "make test-valkey8 integration tests against Valkey 8"
	@echo "make bench N=...  scripts/bench: plain Redis vs 3-node cluster (docs/PERFORMANCE.md)"
	@echo "make fmt | fmt-check | lint | clean | distclean"

deps:
	@scripts/deps

# The module is built once, in release mode with Redis' allocator; tests load this copy.
# The copy is renamed into place so a running server never sees a half-written file.
build: deps
	$(CARGO) build --release --features redis-alloc
	cp $(RELEASE_SO) redisraft.so.tmp && mv -f redisraft.so.tmp redisraft.so
	@echo "built $(MODULE)"

cluster: build
	@SHARD_GROUPS=$(GROUPS) scripts/cluster-start

stop:
	@scripts/cluster-stop

# Server tests run one at a time (--test-threads=1): several clusters at once on 2 cores
# would turn timing into luck.
# One release build of the test binaries (without redis-alloc: test processes must not use
# Redis' allocator) serves both passes. Pass 1: unit tests, doc tests and every integration
# test against redis-server. Pass 2: the server tests again, against Valkey 9. Both passes
# run to the end (--no-fail-fast); the target fails if either failed.
test: build probe
	@valkey="$$(scripts/install-valkey 9)" || exit 1; \
	export REDISRAFT_MODULE=$(MODULE); rc=0; \
	echo "== unit + integration tests, server: redis-server $$(redis-server --version | cut -d' ' -f3)"; \
	$(CARGO) test --release --no-fail-fast -- --test-threads=1 || rc=1; \
	echo "== server tests, server: $$valkey"; \
	REDISRAFT_SERVER="$$valkey" $(CARGO) test --release --no-fail-fast $(VALKEY_TESTS) -- --test-threads=1 || rc=1; \
	[ $$rc -eq 0 ] || echo "== make test: FAILED (see above)"; \
	exit $$rc

# A second module (examples/probe_module.rs) tests load after redisraft.
probe: deps
	$(CARGO) build --release --example probe_module

test-valkey8: build probe
	@valkey="$$(scripts/install-valkey 8)" && \
	REDISRAFT_MODULE=$(MODULE) REDISRAFT_SERVER="$$valkey" $(CARGO) test --release $(SERVER_TESTS)

bench: build
	scripts/bench -n $(N)

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint: deps
	$(CARGO) clippy --all-targets --all-features -- -D warnings

# Removes what the Makefile and scripts made; `make distclean` also drops cargo's target/.
clean:
	-@scripts/cluster-stop >/dev/null
	rm -rf redisraft.so redisraft.so.tmp .cluster .deps

distclean: clean
	$(CARGO) clean
