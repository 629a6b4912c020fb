# netpol-agent. `make demo` and `make test` work on a fresh Debian machine as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-unit test-lab test-cluster test-node test-cni lint typecheck bench bench-smoke cluster-build node-images e2e-build e2e cnp-conformance-build cnp-conformance clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-host.sh scripts/go-toolchain.sh
	bash scripts/setup-host.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m tests.lab.demo

lint: setup
	$(VENV)/bin/ruff check agent tests
	$(VENV)/bin/ruff format --check agent

typecheck: setup
	$(VENV)/bin/mypy --strict agent

cluster-build: setup
	bash tests/cluster/build.sh

# The real-node tests' images: pause, netprobe and the agent's own (the Dockerfile,
# built with buildah). Cached; a second run only checks the archives exist.
node-images: setup
	bash tests/node/images.sh

# Everything: static checks, unit tests, the network-namespace lab (both iptables
# backends), the tests against a real kube-apiserver + etcd, and the agent's image as a
# DaemonSet on three real nodes (kubelet, containerd, kube-proxy). Builds on first use.
test: setup lint typecheck cluster-build node-images test-cni
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

# The CNI plugin's Go unit tests (the lab runs the built plugin for real).
test-cni: setup
	cd cni && env -u GOROOT GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly \
		"$$(bash ../scripts/go-toolchain.sh | tail -n1)" test ./...

test-unit: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

test-lab: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider -m lab tests

test-cluster: setup cluster-build
	$(VENV)/bin/pytest -q -p no:cacheprovider -m cluster tests

test-node: setup cluster-build node-images
	$(VENV)/bin/pytest -q -p no:cacheprovider -m node tests

# Kubernetes' own NetworkPolicy e2e tests (e2e.test from the k8s.io/kubernetes pin,
# unmodified) against the real nodes with the agent deployed; tests/node/README.md,
# "Upstream e2e". E2E_FOCUS / E2E_SKIP narrow or widen the selection; E2E_IP_FAMILY=ipv6
# runs it on an IPv6 single-stack cluster; E2E_NODES=4 runs 4 specs at a time (ginkgo).
E2E_FOCUS ?= Netpol
e2e-build: setup
	bash tests/cluster/build-e2e.sh
	bash tests/node/images.sh pause agnhost agent

e2e: setup cluster-build e2e-build
	$(PY) -m tests.node.e2e --focus '$(E2E_FOCUS)' $(if $(E2E_SKIP),--skip '$(E2E_SKIP)') \
		$(if $(E2E_IP_FAMILY),--ip-family $(E2E_IP_FAMILY)) $(if $(E2E_NODES),--nodes $(E2E_NODES))

# The network-policy-api conformance suite (sigs.k8s.io/network-policy-api/conformance at
# the pin in tests/cluster/gobuild/netpolapi-conformance, unmodified, profile
# ClusterNetworkPolicy with its experimental features) against the real nodes with the
# agent deployed; tests/node/README.md, "Upstream conformance". CNP_RUN narrows the
# selection (a regex on the test names), CNP_SKIP replaces the default skip (SCTP);
# CNP_IP_FAMILY=ipv6 runs it on an IPv6 single-stack cluster.
cnp-conformance-build: setup
	bash tests/cluster/build-cnp-conformance.sh
	bash tests/node/images.sh pause cnp-agnhost agent

cnp-conformance: setup cluster-build cnp-conformance-build
	$(PY) -m tests.node.cnp_conformance $(if $(CNP_RUN),--run '$(CNP_RUN)') $(if $(CNP_SKIP),--skip '$(CNP_SKIP)') \
		$(if $(CNP_IP_FAMILY),--ip-family $(CNP_IP_FAMILY))

bench: setup
	$(PY) -m bench.load --runs 7
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
