# Braid: build, generate, test, and the local Kubernetes the tests run against.
# `make help` lists the targets. Everything a fresh machine needs is installed by the targets
# themselves (see `deps`); the Kubernetes binaries are built once into ~/.cache/braid/tools.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
CLUSTER := bash e2e/cluster/cluster.sh
# The proxy benchmark's driver (bench/src): `make bench`, `make pgo`, `make link-order`.
BENCH = $(CARGO) run --release --locked -q -p braid-bench --
# The Kubernetes release the local cluster runs and k8s-openapi's feature (Cargo.toml) targets.
KUBERNETES_VERSION := v1.34.3

.DEFAULT_GOAL := help

# A clean checkout gains nothing from incremental compilation, and its cache doubles target/'s size.
ifeq ($(CI),true)
export CARGO_INCREMENTAL := 0
endif

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install the Debian packages the build and the local cluster need (skips what is there)
	@bash e2e/cluster/deps.sh

.PHONY: build
build: ## Build every binary of the workspace (debug)
	$(CARGO) build --workspace --bins --locked

.PHONY: crds
crds: ## Regenerate crds/*.yaml and the Helm chart's copy from the Rust types
	$(CARGO) run --quiet --locked -p braid-crds --bin crdgen -- crds helm/braid/crds

.PHONY: fmt
fmt: ## Format the code
	$(CARGO) fmt --all

.PHONY: fmt-check
fmt-check: ## Fail when the code is not formatted
	$(CARGO) fmt --all -- --check

.PHONY: lint
lint: ## clippy on every target, warnings are errors
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: gateway-api-crds
gateway-api-crds: ## Refresh the chart's copy of the Gateway API CRDs (the release e2e/tools/gateway-api/go.mod pins)
	@bash e2e/cluster/gateway-api.sh chart

.PHONY: conformance
conformance: cluster-tools ## The Gateway API conformance suite's mesh profiles against Braid, installed by Helm on the local cluster (up; images built); see docs/gateway-api.md
	@bash e2e/conformance/conformance.sh check

.PHONY: helm-lint
helm-lint: deps ## Lint the Helm chart (strict; values.schema.json checks the default values)
	@"$$(bash e2e/cluster/build-tools.sh helm 2>/dev/null | tail -n 1)/helm" lint --strict helm/braid

.PHONY: unit
unit: deps ## Unit tests (the proxy's in real network namespaces: root, iptables), and the CRD drift check
	$(CARGO) test --workspace --exclude braid-e2e --locked

.PHONY: unit-build
unit-build: ## Compile the unit tests without running them
	$(CARGO) test --workspace --exclude braid-e2e --locked --no-run

.PHONY: tools
tools: deps ## Build kube-apiserver, kubectl, etcd, helm ... and the e2e tests' Prometheus and Jaeger from their Go modules (cached)
	@bash e2e/cluster/build-tools.sh >/dev/null

# What the local cluster runs, and what pushes to its registry (build-tools.sh knows the group). The e2e
# tests that use Prometheus or Jaeger build them on first use.
.PHONY: cluster-tools
cluster-tools: deps ## Build only what the local cluster needs (tools without Prometheus and Jaeger)
	@bash e2e/cluster/build-tools.sh --cluster >/dev/null

.PHONY: cluster-up
cluster-up: cluster-tools ## Start the local Kubernetes (or reuse the running one); prints the kubeconfig path
	@$(CLUSTER) up

.PHONY: cgroup-v2-check
cgroup-v2-check: cluster-tools ## The node on cgroup v2: a VM (QEMU) with cgroup v2 only and this machine's root runs the cluster, pods under limits and the node's e2e test
	@$(CARGO) test -p braid-e2e --locked --no-run --test node
	@bash e2e/cgroup-v2/check.sh

.PHONY: cluster-down
cluster-down: ## Stop the local Kubernetes and everything started against it; remove its state
	@$(CLUSTER) down

.PHONY: images
images: deps cluster-tools ## Build the images (braid-proxy, -operator, -webhook, -testapps) and push them to the local cluster's registry
	@bash images/build.sh

# Where `make push` and `make chart` publish: a repository such as registry.example.com/braid, and a CA
# file to trust for it when its certificate is not from a public CA.
IMAGE_REPO ?=
REGISTRY_CA ?=

.PHONY: image-archives
image-archives: deps ## Build the images' archives only (no cluster, no push); make images then only pushes
	@bash images/build.sh --no-push

.PHONY: previous-release
previous-release: deps ## Build the previous release's image archives, for the upgrade test (cached per release)
	@bash e2e/upgrade/previous-release.sh build

.PHONY: push
push: deps ## Push braid-proxy, -operator and -webhook (linux/amd64) to IMAGE_REPO, tagged with the chart's appVersion
	@[ -n "$(IMAGE_REPO)" ] || { echo "usage: make push IMAGE_REPO=registry.example.com/braid [REGISTRY_CA=ca.crt]" >&2; exit 2; }
	@REGISTRY_CA="$(REGISTRY_CA)" bash images/build.sh --push-to "$(IMAGE_REPO)" braid-proxy braid-operator braid-webhook

.PHONY: chart
chart: ## Package the Helm chart for IMAGE_REPO's images and push it to oci://IMAGE_REPO/charts
	@[ -n "$(IMAGE_REPO)" ] || { echo "usage: make chart IMAGE_REPO=registry.example.com/braid [REGISTRY_CA=ca.crt]" >&2; exit 2; }
	@REGISTRY_CA="$(REGISTRY_CA)" bash helm/publish.sh "$(IMAGE_REPO)"

.PHONY: integration
integration: build ## Tests against the local Kubernetes (which must be up: make cluster-up); builds and pushes the images first
	@$(CLUSTER) status >/dev/null || { echo "the local cluster is not up: run 'make cluster-up' (or 'make test', which starts it)" >&2; exit 1; }
	@bash images/build.sh
	@# Without backtraces: a failed test's message (it names the file and line) is then the last
	@# thing before the summary, where a log cut to its tail still shows it.
	RUST_BACKTRACE=0 $(CARGO) test -p braid-e2e --locked -- --nocapture
	@bash e2e/conformance/conformance.sh check

.PHONY: e2e-build
e2e-build: ## Compile the end-to-end tests without running them (no cluster needed)
	$(CARGO) test -p braid-e2e --locked --no-run

.PHONY: e2e
e2e: ## Start the local Kubernetes if needed, run the tests against it, stop it if it was started here
	@$(MAKE) --no-print-directory with-cluster TARGET=integration FRESH_TARGET=demo-check

.PHONY: demo-check
demo-check: ## The demo on a cluster that has never seen Braid, checked (0 failed, the 80/20 split), then removed
	@bash e2e/demo.sh --check

# Runs $(TARGET) with the local cluster up; stops the cluster afterwards only when this run started
# it, so a developer's running cluster is reused (in CI, never: CI=true replaces it) and CI leaves no
# process behind. Before starting one, whatever an earlier cluster left is removed, and
# leftovers-test.sh checks that `down` removes every kind of leftover. A cluster this run started has
# never seen Braid: $(FRESH_TARGET) runs on it first, so that a step which works only because of state
# an earlier run left fails here. On a reused cluster neither can run, and it says so.
.PHONY: with-cluster
with-cluster: cluster-tools
	@started=0; \
	if [ "$(CI)" = true ] || ! $(CLUSTER) status >/dev/null 2>&1; then \
	  $(CLUSTER) down && bash e2e/cluster/leftovers-test.sh && $(CLUSTER) up >/dev/null || exit 1; started=1; fi; \
	status=0; \
	if [ -n "$(FRESH_TARGET)" ]; then \
	  if [ $$started = 1 ]; then $(MAKE) --no-print-directory $(FRESH_TARGET) || status=$$?; \
	  else echo "note: $(FRESH_TARGET) and leftovers-test.sh need a machine where no cluster was up, and this" \
	    "one was: run them with: make cluster-down && make e2e" >&2; fi; \
	fi; \
	if [ $$status = 0 ]; then $(MAKE) --no-print-directory $(TARGET) || status=$$?; fi; \
	if [ $$started = 1 ]; then $(CLUSTER) down; fi; \
	exit $$status

# In the order that is quickest from a cold machine (2 cores): the format first; then what the
# cluster needs, the Kubernetes binaries beside the images; then the cluster's tests, with what only
# later steps use built beside them at the lowest priority (the end-to-end tests mostly wait on the
# cluster: see e2e/with-background-builds.sh), clippy and the unit tests' compilation among it; last
# clippy's verdict and the unit tests. `make checks` is the quick loop without a cluster.
.PHONY: test
test: deps ## Everything: format, lint, unit, integration and end-to-end tests
	@$(MAKE) --no-print-directory fmt-check
	@$(MAKE) --no-print-directory -j2 cluster-tools image-archives
	@bash e2e/with-background-builds.sh $(MAKE) --no-print-directory helm-lint e2e
	@$(MAKE) --no-print-directory lint unit

# What needs no Kubernetes, in order.
.PHONY: checks
checks: ## Format, lint and unit tests (no cluster)
	@for step in fmt-check lint unit; do $(MAKE) --no-print-directory $$step; done

.PHONY: bench
bench: tools ## Benchmarks: webhook admission, the sidecar pair beside HAProxy/nginx/Envoy (also large bodies, many connections, gRPC, a large table), discovery at 10,000 proxies; results in bench/results/
	$(BENCH) webhook
	$(BENCH) pairs
	@# c1000 needs 4,096 open files per process; the driver says so when the limit stays lower.
	if [ "$$(ulimit -n)" != unlimited ] && [ "$$(ulimit -n)" -lt 4096 ]; then ulimit -n 4096 2>/dev/null || true; fi; \
	  $(BENCH) workloads
	$(BENCH) instructions
	@bash bench/discovery.sh

.PHONY: pgo
pgo: ## Rewrite proxy/pgo/braid-proxy.profdata.gz (the counts the proxy is built with) from an instrumented build carrying a training mix the benchmark does not measure
	$(BENCH) pgo

.PHONY: link-order
link-order: ## Rewrite proxy/link-order.txt (the proxy's code layout: what it runs first) from a callgrind run of the training mix
	$(BENCH) link-order

FUZZ_SECONDS ?= 60
.PHONY: fuzz
fuzz: ## Fuzz the webhook's AdmissionReview handling and the proxy's detection, parsing (requests, and apps' HTTP/1.1 responses) and config, FUZZ_SECONDS (60) each
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	@mkdir -p webhook/fuzz/corpus/admission_review proxy/fuzz/corpus/detect_request proxy/fuzz/corpus/http1_response proxy/fuzz/corpus/config
	@cp webhook/tests/golden/*.review.json webhook/fuzz/corpus/admission_review/
	@cp proxy/fuzz/seeds/detect_request/* proxy/fuzz/corpus/detect_request/
	@cp proxy/fuzz/seeds/config/* proxy/fuzz/corpus/config/
	@cp proxy/fuzz/seeds/http1_response/* proxy/fuzz/corpus/http1_response/
	cd webhook/fuzz && $(CARGO) +nightly fuzz run admission_review corpus/admission_review -- \
	  -max_total_time=$(FUZZ_SECONDS) -dict=admission_review.dict
	cd proxy/fuzz && $(CARGO) +nightly fuzz run detect_request corpus/detect_request -- -max_total_time=$(FUZZ_SECONDS)
	cd proxy/fuzz && $(CARGO) +nightly fuzz run http1_response corpus/http1_response -- -max_total_time=$(FUZZ_SECONDS)
	cd proxy/fuzz && $(CARGO) +nightly fuzz run config corpus/config -- -max_total_time=$(FUZZ_SECONDS)

.PHONY: demo
demo: cluster-tools ## Local Kubernetes with its node, images, Braid via Helm, demo apps and traffic; then kubectl get pods,meshroutes -A
	@bash e2e/demo.sh
