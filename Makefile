# The openGauss operator. `make demo` runs a three-instance cluster on this machine;
# `make test` runs every test (lint included) the way CI does.
CARGO ?= cargo
BIN_DEBUG := target/debug/opengauss-operator
BIN_RELEASE := target/release/opengauss-operator
SAMPLE ?= deploy/samples/local.yaml
CRD_FILE := deploy/crds/opengaussclusters.ha.opengauss.dev.yaml

.PHONY: all build demo test lint fmt generate bench e2e-kind kind-up kind-down image tools clean

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
	$(CARGO) run -q -p opengauss-operator --bin opengauss-operator -- crd > $(CRD_FILE).tmp && mv $(CRD_FILE).tmp $(CRD_FILE)

## Benchmarks on real PostgreSQL (release build); prints the figures.
bench: tools
	$(CARGO) build --release -p opengauss-operator -p opengauss-e2e
	OPENGAUSS_OPERATOR_BIN=$(CURDIR)/$(BIN_RELEASE) target/release/bench

## Kubernetes (needs Docker, kind, kubectl and internet; not runnable on machines without them).
IMAGE ?= opengauss-operator:dev
KIND_CLUSTER ?= opengauss

## The operator image: a static binary on busybox.
image:
	docker build -t $(IMAGE) .

## A kind cluster with the operator image loaded and the operator deployed.
kind-up: image
	kind get clusters | grep -qx '$(KIND_CLUSTER)' || kind create cluster --name $(KIND_CLUSTER) --config deploy/kind/cluster.yaml --wait 180s
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	kubectl --context kind-$(KIND_CLUSTER) apply -f deploy/crds/ -f deploy/rbac/ -f deploy/operator/
	kubectl --context kind-$(KIND_CLUSTER) -n opengauss-operator-system rollout status deployment/opengauss-operator --timeout=180s

kind-down:
	kind delete cluster --name $(KIND_CLUSTER)

## The kind end-to-end suite: the kind cluster with the operator (kind-up), the samples'
## database images loaded into its nodes, then each sample through bootstrap, the original
## deployment's checks, failover, rejoin and cleanup.
E2E_DB_IMAGES ?= opengauss/opengauss-server:7.0.0-RC1 postgres:17
e2e-kind: kind-up
	for i in $(E2E_DB_IMAGES); do docker pull $$i && kind load docker-image $$i --name $(KIND_CLUSTER) || exit 1; done
	./scripts/ensure-tools.sh nextest
	OPENGAUSS_E2E_KIND_CLUSTER=$(KIND_CLUSTER) OPENGAUSS_E2E_IMAGE=$(IMAGE) OPENGAUSS_E2E_SKIP_BUILD=1 \
	  $(CARGO) nextest run --config-file scripts/nextest-kind.toml -p opengauss-e2e --test kind \
	  --run-ignored only --test-threads 1 --no-fail-fast

clean:
	$(CARGO) clean
