#!/usr/bin/env bash
# Start a real etcd + kube-apiserver on loopback in the foreground (Ctrl-C stops
# and cleans up). Builds the binaries first if they are not cached yet.
#
#   tests/cluster/up.sh [--watch-cache] [--kubeconfig-out PATH]
#
# Prints "KUBECONFIG=/path/to/admin.kubeconfig" and "KUBECTL=/path/to/kubectl" (built
# from the same k8s.io/kubernetes pin) on stdout once /readyz is OK, e.g.
#   export KUBECONFIG=... ; "$KUBECTL" get ns
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${repo}/.venv/bin/python"
[[ -x "${python}" ]] || python="$(command -v python3)"
cd "${repo}"
exec "${python}" -m tests.cluster.controlplane "$@"
