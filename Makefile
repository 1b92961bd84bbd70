# Developer entry points. Every target works from a fresh Debian with make and Go
# (Go at /usr/local/go/bin is found even when it is not on PATH).
# RABBIT_URI selects the broker (default amqp://guest:guest@127.0.0.1:5672/).

export PATH := $(PATH):/usr/local/go/bin
SHELL := /bin/bash

FUZZTIME ?= 30s
FUZZPKGS ?= ./wire

.PHONY: all broker demo test conformance bench fuzz lint

all: lint test

# Make sure a RabbitMQ broker answers at RABBIT_URI (starts or installs a local one).
broker:
	scripts/rabbitmq.sh

# The main demo: the quickstart example against the broker.
demo: broker
	go run ./examples/quickstart

# The whole suite: go vet, then go test -race -count=1 ./... (fails on skipped tests).
test:
	scripts/test.sh

# Wire compatibility with the Node library, against ../shared/conformance.
conformance: broker
	scripts/conformance.sh

# Library vs raw amqp091-go benchmarks; env N, SIZE.
bench:
	scripts/bench.sh

# Every Fuzz target in FUZZPKGS, FUZZTIME each (default 30s).
fuzz:
	@set -euo pipefail; \
	for pkg in $(FUZZPKGS); do \
		targets=$$(go test -list '^Fuzz' "$$pkg" | grep '^Fuzz' || true); \
		if [[ -z $$targets ]]; then echo "no fuzz targets in $$pkg" >&2; exit 1; fi; \
		for t in $$targets; do \
			echo "== $$pkg $$t ($(FUZZTIME))"; \
			go test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) "$$pkg"; \
		done; \
	done

# gofmt must report nothing; go vet must pass.
lint:
	@files=$$(gofmt -l .); \
	if [[ -n $$files ]]; then echo "gofmt -l: not formatted:"; echo "$$files"; exit 1; fi
	go vet ./...
