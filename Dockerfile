# syntax=docker/dockerfile:1
# netpol-agent image: docker build -t netpol-agent:dev .
#
# Stage 0 builds the CNI plugin; stage 1 builds wheels (the agent's and any dependency
# that ships only as an sdist, e.g. python-iptables with its small C helper); stage 2
# installs them with no compiler or build tools present.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# The CNI plugin (cni/): a static Go binary, copied onto each node by `install-cni`.
FROM golang:1.26.8-bookworm AS cni
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
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
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
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-index --find-links /tmp/wheels netpol-agent \
 && rm -rf /tmp/wheels \
 && netpol-agent --help > /dev/null
# Root with only NET_ADMIN + NET_RAW (granted in deploy/daemonset.yaml): iptables needs it.
USER 0
ENTRYPOINT ["netpol-agent"]
CMD ["--help"]
