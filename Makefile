# The openGauss operator. `make demo` runs a three-instance cluster on this machine;
# `make test` runs every test (lint included) the way CI does.
CARGO ?= cargo
BIN_DEBUG := target/debug/opengauss-operator
BIN_RELEASE := target/release/opengauss-operator
SAMPLE ?= deploy/samples/local.yaml
CRD_FILE := deploy/crds/opengaussclusters.ha.opengauss.dev.yaml

.PHONY: all build demo test lint fmt generate bench e2e-kind kind-up kind-down tools clean

all: build

build:
	$(CARGO) build --workspace --all-targets

## The main job: build and run the local three-instance cluster (Ctrl-C stops it).
demo:
	./scripts/ensure-tools.sh postgres
	$(CARGO) build --release -p opengauss-operator
	$(BIN_RELEASE) local up -f $(SAMPLE)

tools:
	./scripts/ensure-tools.sh

## Every test: formatting, lints, unit, golden, simulation, mocked Kubernetes API, schema
## validation and the real-database end-to-end tests.
test: tools lint
	$(CARGO) build --workspace --all-targets
	OPENGAUSS_OPERATOR_BIN=$(CURDIR)/$(BIN_DEBUG) $(CARGO) nextest run --workspace --no-fail-fast

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate checked-in files (the CRD).
generate:
	$(CARGO) run -q -p opengauss-operator -- crd > $(CRD_FILE)

## Benchmarks on real PostgreSQL (release build); prints the figures.
bench: tools
	$(CARGO) build --release -p opengauss-operator -p opengauss-e2e
	OPENGAUSS_OPERATOR_BIN=$(CURDIR)/$(BIN_RELEASE) target/release/bench

clean:
	$(CARGO) clean
