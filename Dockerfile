# syntax=docker/dockerfile:1
# netpol-agent image: docker build -t netpol-agent:dev .
#
# Stage 0 builds the CNI plugin (cni/), a static Go binary. Stage 1 installs the agent
# and its dependencies into a virtual environment, /opt/venv (building what ships only
# as an sdist, e.g. python-iptables with its small C helper); stage 2 copies both in,
# with no compiler, build tools or wheels present.
# Copying the installed environment (rather than copying wheels and running pip in stage
# 2) keeps the wheels out of the image's layers, and every builder's cache sees when it
# changes (a COPY is checksummed; a RUN --mount from another stage is not, in buildah).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG GO_IMAGE=golang:1.26.8-bookworm

# The CNI plugin (cni/): a static Go binary, copied onto each node by `install-cni`.
FROM ${GO_IMAGE} AS cni
WORKDIR /src
COPY cni/ ./
RUN CGO_ENABLED=0 GOTOOLCHAIN=local go build -trimpath -ldflags="-s -w" -o /netpol-agent-cni .

FROM ${PYTHON_IMAGE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
# The venv has no pip of its own: the image's pip installs into it (pip >= 22.3).
RUN python3 -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install .

FROM ${PYTHON_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# iptables ships both backends on bookworm: iptables-nft* and iptables-legacy* (plus the
# ip6tables variants and their -restore/-save); the agent picks one itself, as kubelet
# does, so the alternatives symlink does not matter. conntrack is for operators.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables conntrack \
 && rm -rf /var/lib/apt/lists/* \
 && iptables-legacy --version && iptables-nft --version
COPY --from=cni /netpol-agent-cni /opt/netpol-agent/cni/netpol-agent
# The same base image in both stages, so the venv's python (a symlink to the base's
# python3) resolves here too.
COPY --from=builder /opt/venv /opt/venv
RUN netpol-agent --help > /dev/null
# Root with only NET_ADMIN + NET_RAW (granted in deploy/daemonset.yaml): iptables needs it.
USER 0
ENTRYPOINT ["netpol-agent"]
CMD ["--help"]
