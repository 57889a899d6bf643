# The openGauss operator. `make demo` runs a three-instance cluster on this machine;
# `make test` runs every test (lint included) the way CI does.
CARGO ?= cargo
BIN_DEBUG := target/debug/opengauss-operator
BIN_RELEASE := target/release/opengauss-operator
SAMPLE ?= deploy/samples/local.yaml
CRD_FILE := deploy/crds/opengaussclusters.ha.opengauss.dev.yaml

.PHONY: all build demo test test-local lint fmt generate bench e2e-kind kind-up kind-down image tools clean \
	tools-k8s k8s-up k8s-down e2e-k8s operator-image-binary k8s-prebuild e2e-opengauss install bench-k8s

all: build

build:
	$(CARGO) build --workspace --all-targets

## The main job: build and run the local three-instance cluster (Ctrl-C stops it).
demo:
	./scripts/ensure-tools.sh postgres
	$(CARGO) build --release -p opengauss-operator
	$(BIN_RELEASE) local up -f $(SAMPLE)

## opengauss-operator and kubectl-opengauss into ~/.cargo/bin (or $(PREFIX)/bin).
PREFIX ?= $(HOME)/.cargo
install:
	$(CARGO) install --locked --path operator --root $(PREFIX)

tools:
	./scripts/ensure-tools.sh

## Every test: formatting, lints, unit, golden, simulation, mocked Kubernetes API, schema
## validation, the real-database end-to-end tests, then the Kubernetes suite on a real
## one-node cluster built here from upstream parts (e2e-k8s).
## The Kubernetes suite's builds (the upstream components in Go, ~15 minutes cold and cached
## after, and the operator image's binary) run while the real-database tests run, which
## mostly wait on their databases.
test: tools lint tools-k8s
	$(CARGO) build --workspace --all-targets
	status=0; nice -n 10 $(MAKE) --no-print-directory k8s-prebuild > target/k8s-prebuild.log 2>&1 & build=$$!; \
	OPENGAUSS_OPERATOR_BIN=$(CURDIR)/$(BIN_DEBUG) $(CARGO) nextest run --workspace --no-fail-fast || status=$$?; \
	wait $$build || { echo "building for the Kubernetes suite failed:"; tail -40 target/k8s-prebuild.log; exit 1; }; \
	exit $$status
	$(MAKE) e2e-k8s

k8s-prebuild:
	$(K8S_NODE) build
	$(MAKE) --no-print-directory operator-image-binary

## Everything but the Kubernetes suite.
test-local: tools lint
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
	$(MAKE) bench-k8s

## The Kubernetes benchmarks on the one-node cluster: `make k8s-up` (warm: its parts cached),
## apply of the sample to Healthy, failover by pod deletion and by a killed container to the
## first write through the -rw Service. Needs root; stops the cluster afterwards.
bench-k8s: tools-k8s operator-image-binary
	$(CARGO) build --release -p opengauss-e2e --bin bench-k8s
	$(CARGO) build -p opengauss-e2e --bin k8s-node
	start=$$(date +%s.%N); $(K8S_NODE) up --operator-binary $(OPERATOR_IMAGE_BIN) || exit 1; \
	  awk -v s=$$start -v e=$$(date +%s.%N) 'BEGIN { printf "make k8s-up (warm): %.1f s\n", e - s }'
	status=0; OPENGAUSS_E2E_CLUSTER=node target/release/bench-k8s || status=$$?; \
	$(K8S_NODE) down >/dev/null || { [ $$status -ne 0 ] || status=1; }; exit $$status

## A real one-node Kubernetes cluster on this machine, from upstream parts (see README):
## `make k8s-up` builds (or reuses, cached in ~/.cache/opengauss-operator/k8s) etcd,
## kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl,
## CoreDNS and the local-path provisioner from the Go modules pinned in e2e/k8s/components,
## builds the images (pause, PostgreSQL 15 from a Debian root filesystem, the operator),
## starts everything under .k8s/ and deploys the operator with `kubectl apply -k`.
## `make k8s-down` stops it and undoes every change. Needs root.
MUSL_TARGET := x86_64-unknown-linux-musl
# A target directory of its own, so this build does not wait for (or block) the others.
IMAGE_TARGET_DIR := target/image-build
OPERATOR_IMAGE_BIN := $(IMAGE_TARGET_DIR)/$(MUSL_TARGET)/image/opengauss-operator
K8S_NODE := target/debug/k8s-node

tools-k8s:
	./scripts/ensure-tools.sh k8s

## The operator binary of the image: static (musl), as the Dockerfile builds it.
operator-image-binary: tools-k8s
	CC_x86_64_unknown_linux_musl=musl-gcc CARGO_TARGET_DIR=$(IMAGE_TARGET_DIR) $(CARGO) build --profile image --target $(MUSL_TARGET) -p opengauss-operator --bin opengauss-operator

k8s-up: operator-image-binary
	$(CARGO) build -p opengauss-e2e --bin k8s-node
	$(K8S_NODE) up --operator-binary $(OPERATOR_IMAGE_BIN)

k8s-down:
	$(CARGO) build -p opengauss-e2e --bin k8s-node
	$(K8S_NODE) down

## The Kubernetes suite on the one-node cluster: up, every scenario, down (also on failure).
e2e-k8s: k8s-up
	./scripts/ensure-tools.sh nextest
	status=0; OPENGAUSS_E2E_CLUSTER=node $(CARGO) nextest run --profile kubernetes -p opengauss-e2e \
	  --test kubernetes --run-ignored only --no-fail-fast -E 'not test(/^opengauss_/)' || status=$$?; \
	$(K8S_NODE) down || { [ $$status -ne 0 ] || status=1; }; exit $$status

## Kubernetes on kind (needs Docker, kind, kubectl and internet; not runnable on machines without them).
IMAGE ?= opengauss-operator:dev
KIND_CLUSTER ?= opengauss

## The operator image: a static binary on busybox.
image:
	docker build -t $(IMAGE) .

## A kind cluster with the operator image loaded and the operator deployed.
kind-up: image
	kind get clusters | grep -qx '$(KIND_CLUSTER)' || kind create cluster --name $(KIND_CLUSTER) --config deploy/kind/cluster.yaml --wait 180s
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	kubectl --context kind-$(KIND_CLUSTER) apply -k deploy/
	kubectl --context kind-$(KIND_CLUSTER) -n opengauss-operator-system rollout status deployment/opengauss-operator --timeout=180s

kind-down:
	kind delete cluster --name $(KIND_CLUSTER)

## The Kubernetes suite on kind: the kind cluster with the operator (kind-up), then every
## scenario. The nodes pull the samples' database images themselves (pre-loading multi-arch
## images with `kind load` fails on Docker's containerd image store).
## The real-openGauss tier: the local platform on an openGauss installation built from its
## source (no registry carries one, so CI cannot run it). OPENGAUSS_BIN_DIR names its bin/
## (lib/ beside it); its servers run as OPENGAUSS_OS_USER (default omm).
OPENGAUSS_BIN_DIR ?= /opt/opengauss/install/bin
e2e-opengauss: tools
	./scripts/ensure-tools.sh nextest
	OPENGAUSS_BIN_DIR=$(OPENGAUSS_BIN_DIR) $(CARGO) nextest run --profile kubernetes -p opengauss-e2e \
	  --test opengauss --run-ignored only --no-fail-fast

e2e-kind: kind-up
	./scripts/ensure-tools.sh nextest
	OPENGAUSS_E2E_CLUSTER=kind OPENGAUSS_E2E_KIND_CLUSTER=$(KIND_CLUSTER) OPENGAUSS_E2E_IMAGE=$(IMAGE) OPENGAUSS_E2E_SKIP_BUILD=1 \
	  $(CARGO) nextest run --profile kubernetes -p opengauss-e2e --test kubernetes \
	  --run-ignored only --no-fail-fast

clean:
	$(CARGO) clean
